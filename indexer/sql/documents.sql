-- Document queries: one row per API object, with every derived value recomputed from the
-- source tables (never incremented), so that a replayed change cannot double count.
-- The same "_by_ids" queries rebuild the objects a batch of changes touched and, fed with
-- primary-key chunks, the whole tables during a snapshot.

-- name: vouchers_by_ids
SELECT v.id, v.project_id, v.code, v.campaign_id, c.name AS campaign_name, v.type, v.discount,
       v.gift_amount, v.gift_balance, v.loyalty_points, v.loyalty_balance, v.active,
       v.start_date, v.expiration_date, v.redemption_quantity, v.redeemed_quantity,
       v.holder_id, v.metadata, v.created_at, v.updated_at
FROM vouchers v
LEFT JOIN campaigns c ON c.id = v.campaign_id
WHERE v.id = ANY(%(ids)s)

-- name: customers_by_ids
SELECT c.id, c.project_id, c.source_id, c.name, c.email, c.phone, c.address, c.metadata,
       c.created_at, c.updated_at,
       r.total_redeemed, r.total_succeeded, r.total_failed, r.redeemed_amount, r.redeemed_points,
       l.points AS loyalty_points,
       m.segment_ids AS static_segment_ids
FROM customers c
LEFT JOIN LATERAL (
    SELECT count(*) AS total_redeemed,
           count(*) FILTER (WHERE result = 'SUCCESS') AS total_succeeded,
           count(*) FILTER (WHERE result = 'FAILURE') AS total_failed,
           coalesce(sum(amount) FILTER (WHERE result = 'SUCCESS'), 0) AS redeemed_amount,
           coalesce(sum(points) FILTER (WHERE result = 'SUCCESS'), 0) AS redeemed_points
    FROM redemptions WHERE customer_id = c.id
) r ON true
LEFT JOIN LATERAL (
    SELECT coalesce(sum(loyalty_balance), 0) AS points
    FROM vouchers WHERE holder_id = c.id AND type = 'LOYALTY_CARD'
) l ON true
LEFT JOIN LATERAL (
    -- Member rows count for static segments only: an auto-update segment's members are
    -- whoever matches its filter, whatever rows a client left in segment_members.
    SELECT coalesce(array_agg(sm.segment_id ORDER BY sm.segment_id), '{}') AS segment_ids
    FROM segment_members sm
    JOIN segments s ON s.id = sm.segment_id AND s.type = 'static'
    WHERE sm.customer_id = c.id
) m ON true
WHERE c.id = ANY(%(ids)s)

-- name: campaigns_by_ids
SELECT c.id, c.project_id, c.name, c.type, c.active, c.start_date, c.expiration_date,
       c.metadata, c.created_at, c.updated_at,
       (SELECT count(*) FROM vouchers v WHERE v.campaign_id = c.id) AS vouchers_count
FROM campaigns c
WHERE c.id = ANY(%(ids)s)

-- name: segments_by_ids
SELECT s.id, s.project_id, s.name, s.type, s.filter, s.created_at, s.updated_at
FROM segments s
WHERE s.id = ANY(%(ids)s)

-- name: auto_segments_of_projects
SELECT s.id, s.project_id, s.filter
FROM segments s
WHERE s.type = 'auto-update' AND s.project_id = ANY(%(project_ids)s)
ORDER BY s.id

-- name: api_keys_by_ids
SELECT k.id, k.project_id, k.token_sha256, k.rate_limit_per_minute, k.revoked_at
FROM api_keys k
WHERE k.id = ANY(%(ids)s)

-- name: voucher_ids_of_campaign
-- Read through a server-side cursor, a chunk at a time: a campaign may hold millions.
SELECT v.id FROM vouchers v WHERE v.campaign_id = %(campaign_id)s

-- name: customer_ids_of_segments
SELECT sm.segment_id, sm.customer_id FROM segment_members sm WHERE sm.segment_id = ANY(%(ids)s)


-- name: primary_keys_vouchers
SELECT id FROM vouchers ORDER BY id

-- name: primary_keys_customers
SELECT id FROM customers ORDER BY id

-- name: primary_keys_campaigns
SELECT id FROM campaigns ORDER BY id

-- name: primary_keys_segments
SELECT id FROM segments ORDER BY id

-- name: primary_keys_api_keys
SELECT id FROM api_keys ORDER BY id
