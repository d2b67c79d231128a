-- Vouchers and their redemptions (docs/api.md §1). Money in integer cents.

CREATE TABLE vouchers (
    id                  text        PRIMARY KEY,
    project_id          text        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    code                text        NOT NULL,
    campaign_id         text        NULL REFERENCES campaigns (id) ON DELETE SET NULL,
    type                text        NOT NULL
        CONSTRAINT vouchers_type_check
        CHECK (type IN ('DISCOUNT_VOUCHER', 'GIFT_VOUCHER', 'LOYALTY_CARD')),
    discount            jsonb       NULL,
    gift_amount         bigint      NULL,
    gift_balance        bigint      NULL,
    loyalty_points      bigint      NULL,
    loyalty_balance     bigint      NULL,
    active              boolean     NOT NULL DEFAULT true,
    start_date          timestamptz NULL,
    expiration_date     timestamptz NULL,
    redemption_quantity integer     NULL,
    redeemed_quantity   integer     NOT NULL DEFAULT 0,
    holder_id           text        NULL REFERENCES customers (id) ON DELETE SET NULL,
    metadata            jsonb       NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- Its index also serves joins and deletes on project_id.
    CONSTRAINT vouchers_project_id_code_key UNIQUE (project_id, code)
);
ALTER TABLE vouchers REPLICA IDENTITY FULL;
CREATE INDEX vouchers_campaign_id_idx ON vouchers (campaign_id);
CREATE INDEX vouchers_holder_id_idx ON vouchers (holder_id);

CREATE TABLE redemptions (
    id          text        PRIMARY KEY,
    project_id  text        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    voucher_id  text        NOT NULL REFERENCES vouchers (id) ON DELETE CASCADE,
    customer_id text        NULL REFERENCES customers (id) ON DELETE SET NULL,
    amount      bigint      NULL,
    points      bigint      NULL,
    result      text        NOT NULL
        CONSTRAINT redemptions_result_check CHECK (result IN ('SUCCESS', 'FAILURE')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE redemptions REPLICA IDENTITY FULL;
CREATE INDEX redemptions_project_id_idx ON redemptions (project_id);
CREATE INDEX redemptions_voucher_id_idx ON redemptions (voucher_id);
CREATE INDEX redemptions_customer_id_idx ON redemptions (customer_id);
