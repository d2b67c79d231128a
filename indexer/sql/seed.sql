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
