-- Bulk loads of `indexer seed`. Column order here is the order of the generated row tuples
-- (indexer/seed_rows.py); tables in foreign-key order.

-- name: seed_truncate
TRUNCATE segment_members, segments, redemptions, vouchers, campaigns, customers, api_keys,
    projects

-- name: seed_copy_projects
COPY projects (id, name, created_at) FROM STDIN

-- name: seed_copy_api_keys
COPY api_keys (id, project_id, token_sha256, rate_limit_per_minute, created_at, revoked_at)
FROM STDIN

-- name: seed_copy_customers
COPY customers (id, project_id, source_id, name, email, phone, address, metadata, created_at,
    updated_at) FROM STDIN

-- name: seed_copy_campaigns
COPY campaigns (id, project_id, name, type, active, start_date, expiration_date, metadata,
    created_at, updated_at) FROM STDIN

-- name: seed_copy_vouchers
COPY vouchers (id, project_id, code, campaign_id, type, discount, gift_amount, gift_balance,
    loyalty_points, loyalty_balance, active, start_date, expiration_date, redemption_quantity,
    redeemed_quantity, holder_id, metadata, created_at, updated_at) FROM STDIN

-- name: seed_copy_redemptions
COPY redemptions (id, project_id, voucher_id, customer_id, amount, points, result, created_at)
FROM STDIN

-- name: seed_copy_segments
COPY segments (id, project_id, name, type, filter, created_at, updated_at) FROM STDIN

-- name: seed_copy_segment_members
COPY segment_members (segment_id, customer_id) FROM STDIN

-- name: seed_skip_row_triggers
-- Bulk-load mode (needs a superuser or the SET privilege on this parameter): foreign-key
-- triggers do not fire, which halves the server's cost per row; the seed_dangling_* queries
-- then check every reference of the table at once.
SET session_replication_role = replica

-- name: seed_dangling_api_keys
SELECT count(*) FROM api_keys k
WHERE NOT EXISTS (SELECT FROM projects p WHERE p.id = k.project_id)

-- name: seed_dangling_customers
SELECT count(*) FROM customers c
WHERE NOT EXISTS (SELECT FROM projects p WHERE p.id = c.project_id)

-- name: seed_dangling_campaigns
SELECT count(*) FROM campaigns c
WHERE NOT EXISTS (SELECT FROM projects p WHERE p.id = c.project_id)

-- name: seed_dangling_vouchers
SELECT
    (SELECT count(*) FROM vouchers v
     WHERE NOT EXISTS (SELECT FROM projects p WHERE p.id = v.project_id))
  + (SELECT count(*) FROM vouchers v
     WHERE v.campaign_id IS NOT NULL
       AND NOT EXISTS (SELECT FROM campaigns c WHERE c.id = v.campaign_id))
  + (SELECT count(*) FROM vouchers v
     WHERE v.holder_id IS NOT NULL
       AND NOT EXISTS (SELECT FROM customers c WHERE c.id = v.holder_id))

-- name: seed_dangling_redemptions
SELECT
    (SELECT count(*) FROM redemptions r
     WHERE NOT EXISTS (SELECT FROM projects p WHERE p.id = r.project_id))
  + (SELECT count(*) FROM redemptions r
     WHERE NOT EXISTS (SELECT FROM vouchers v WHERE v.id = r.voucher_id))
  + (SELECT count(*) FROM redemptions r
     WHERE r.customer_id IS NOT NULL
       AND NOT EXISTS (SELECT FROM customers c WHERE c.id = r.customer_id))

-- name: seed_dangling_segments
SELECT count(*) FROM segments s
WHERE NOT EXISTS (SELECT FROM projects p WHERE p.id = s.project_id)

-- name: seed_dangling_segment_members
SELECT
    (SELECT count(*) FROM segment_members m
     WHERE NOT EXISTS (SELECT FROM segments s WHERE s.id = m.segment_id))
  + (SELECT count(*) FROM segment_members m
     WHERE NOT EXISTS (SELECT FROM customers c WHERE c.id = m.customer_id))
