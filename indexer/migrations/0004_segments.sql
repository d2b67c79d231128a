-- Segments and the members of static segments (docs/api.md §1, filters in §4).

CREATE TABLE segments (
    id         text        PRIMARY KEY,
    project_id text        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name       text        NOT NULL,
    type       text        NOT NULL
        CONSTRAINT segments_type_check CHECK (type IN ('static', 'auto-update')),
    filter     jsonb       NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE segments REPLICA IDENTITY FULL;
CREATE INDEX segments_project_id_idx ON segments (project_id);

CREATE TABLE segment_members (
    segment_id  text NOT NULL REFERENCES segments (id) ON DELETE CASCADE,
    customer_id text NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    PRIMARY KEY (segment_id, customer_id)
);
ALTER TABLE segment_members REPLICA IDENTITY FULL;
CREATE INDEX segment_members_customer_id_idx ON segment_members (customer_id);
