-- Customers and campaigns (docs/api.md §1).

CREATE TABLE customers (
    id          text        PRIMARY KEY,
    project_id  text        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    source_id   text        NULL,
    name        text        NULL,
    email       text        NULL,
    phone       text        NULL,
    address     jsonb       NULL,
    metadata    jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Its index also serves joins and deletes on project_id.
    CONSTRAINT customers_project_id_source_id_key UNIQUE (project_id, source_id)
);
ALTER TABLE customers REPLICA IDENTITY FULL;

CREATE TABLE campaigns (
    id              text        PRIMARY KEY,
    project_id      text        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name            text        NOT NULL,
    type            text        NOT NULL
        CONSTRAINT campaigns_type_check
        CHECK (type IN ('DISCOUNT_COUPONS', 'GIFT_VOUCHERS', 'LOYALTY_PROGRAM')),
    active          boolean     NOT NULL DEFAULT true,
    start_date      timestamptz NULL,
    expiration_date timestamptz NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE campaigns REPLICA IDENTITY FULL;
CREATE INDEX campaigns_project_id_idx ON campaigns (project_id);
