-- DDL capture on the source: every DDL command's text and objects, written
-- into shardline.ddl_log (in the publication) at the command's position in
-- its transaction. Installed by backfill and cdc, removed by `cdc drop`.
CREATE SCHEMA IF NOT EXISTS shardline;
CREATE TABLE IF NOT EXISTS shardline.ddl_log (
    id          bigserial PRIMARY KEY,
    logged_at   timestamptz NOT NULL DEFAULT now(),
    -- ddl_command_end, or sql_drop (the objects a command dropped)
    event       text NOT NULL,
    command_tag text NOT NULL,
    -- the client's whole query: several statements, or a DO block
    query       text,
    -- this command's place among the query's commands with this tag
    ordinal     int NOT NULL,
    search_path text NOT NULL,
    role        text NOT NULL,
    objects     jsonb NOT NULL DEFAULT '[]',
    -- the tables the command touched, as they are after it
    tables      jsonb NOT NULL DEFAULT '[]',
    -- set when the capture itself failed: cdc stops there
    error       text
);
-- Partitions an ALTER TABLE attached or detached: the rows that joined or
-- left the parent follow the log row in the same transaction as logical
-- messages (prefix shardline.ddl_rows), one per row.
ALTER TABLE shardline.ddl_log ADD COLUMN IF NOT EXISTS partition_rows jsonb NOT NULL DEFAULT '[]';
-- Grants only when missing: a GRANT run again once the trigger exists
-- would be logged as a schema change of its own.
DO $do$
BEGIN
    IF NOT has_schema_privilege('public', 'shardline', 'USAGE') THEN
        GRANT USAGE ON SCHEMA shardline TO PUBLIC;
    END IF;
END $do$;
-- DDL an operator applied by hand: cdc passes over it (`shardline cdc skip-ddl`).
CREATE TABLE IF NOT EXISTS shardline.ddl_skip (
    ddl_id     bigint PRIMARY KEY,
    skipped_at timestamptz NOT NULL DEFAULT now()
);

-- The value a column added with a default gives the rows that existed
-- (attmissingval), as text; NULL when it cannot be read.
CREATE OR REPLACE FUNCTION shardline.ddl_missing_value(rel oid, att int2) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 AS $fn$
DECLARE
    v text;
BEGIN
    SELECT format('SELECT (%L::%s[])[1]::text', a.attmissingval::text, format_type(a.atttypid, NULL))
      INTO v FROM pg_attribute a
     WHERE a.attrelid = rel AND a.attnum = att AND a.atthasmissing
       AND NOT EXISTS (SELECT 1 FROM pg_type t WHERE t.oid = a.atttypid AND t.typcategory = 'A');
    IF v IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE v INTO v;
    RETURN v;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END $fn$;

-- A table as a command left it: columns (with the value existing rows got
-- for a column added with a default), primary key, partitioning.
CREATE OR REPLACE FUNCTION shardline.ddl_table(rel oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT jsonb_build_object(
        'schema', n.nspname, 'name', c.relname, 'partitioned', c.relkind = 'p',
        'parent', (SELECT quote_ident(pn.nspname) || '.' || quote_ident(pc.relname)
                     FROM pg_inherits i JOIN pg_class pc ON pc.oid = i.inhparent
                     JOIN pg_namespace pn ON pn.oid = pc.relnamespace
                    WHERE i.inhrelid = c.oid AND c.relispartition),
        'primary_key', coalesce((SELECT jsonb_agg(a.attname ORDER BY k.ord)
                     FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                    WHERE i.indrelid = c.oid AND i.indisprimary), '[]'),
        'columns', coalesce((SELECT jsonb_agg(jsonb_build_object(
                        'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
                        'has_missing', a.atthasmissing,
                        'missing', shardline.ddl_missing_value(c.oid, a.attnum)) ORDER BY a.attnum)
                     FROM pg_attribute a
                    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'))
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = rel
$fn$;

-- Every partition of a partitioned table, as child:parent oids: taken at
-- an ALTER TABLE's start and compared at its end, it names what the
-- command attached or detached (pg_event_trigger_ddl_commands names only
-- the parent).
CREATE OR REPLACE FUNCTION shardline.ddl_partitions() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT coalesce(string_agg(i.inhrelid::text || ':' || i.inhparent::text, ',' ORDER BY i.inhrelid), '')
      FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
     WHERE p.relkind = 'p'
$fn$;

-- The partitions an ALTER TABLE attached and detached, compared with the
-- snapshot its start took, whose parent's root is published. Each names
-- the root's columns (stored generated ones left out, as the stream
-- does) and its replica identity, as the rows will be sent.
CREATE OR REPLACE FUNCTION shardline.ddl_partition_changes(p_key text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_saved text := current_setting('shardline.ddl_partitions', true);
    v_before text[];
    v_after text[];
BEGIN
    IF v_saved IS NULL OR split_part(v_saved, '|', 1) <> p_key THEN
        RETURN NULL;
    END IF;
    v_before := string_to_array(split_part(v_saved, '|', 2), ',');
    v_after := string_to_array(shardline.ddl_partitions(), ',');
    RETURN coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'op', d.op,
                   'partition', quote_ident(cn.nspname) || '.' || quote_ident(c.relname),
                   'parent', quote_ident(pn.nspname) || '.' || quote_ident(p.relname),
                   'root', quote_ident(rn.nspname) || '.' || quote_ident(r.relname),
                   'columns', (SELECT jsonb_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
                                WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
                   'replica_identity', r.relreplident,
                   'identity', coalesce((SELECT jsonb_agg(a.attname ORDER BY k.ord)
                                FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                               WHERE i.indrelid = r.oid
                                 AND CASE r.relreplident WHEN 'i' THEN i.indisreplident WHEN 'd' THEN i.indisprimary ELSE false END), '[]'))
                 ORDER BY d.ord)
          FROM (SELECT 'attach' AS op, x, 1 AS ord FROM unnest(v_after) x WHERE x <> ALL (coalesce(v_before, '{}'))
                UNION ALL
                SELECT 'detach', x, 2 FROM unnest(v_before) x WHERE x <> ALL (coalesce(v_after, '{}'))) d
          JOIN pg_class c ON c.oid = split_part(d.x, ':', 1)::oid
          JOIN pg_namespace cn ON cn.oid = c.relnamespace
          JOIN pg_class p ON p.oid = split_part(d.x, ':', 2)::oid
          JOIN pg_namespace pn ON pn.oid = p.relnamespace
          JOIN pg_class r ON r.oid = pg_partition_root(p.oid)
          JOIN pg_namespace rn ON rn.oid = r.relnamespace
         WHERE EXISTS (SELECT 1 FROM pg_publication WHERE puballtables)
            OR EXISTS (SELECT 1 FROM pg_publication_rel pr WHERE pr.prrelid = r.oid)), '[]');
END $fn$;

-- Sends each row of a partition that was attached or detached as one
-- transactional logical message, right after the log row: it reaches cdc
-- at this position in the stream. A row is a JSON array of the columns'
-- text forms (NULL as null) in the order the change names them; the
-- settings make every type's text read back as the same value.
CREATE OR REPLACE FUNCTION shardline.ddl_partition_rows(p_id bigint, p_part int, p_change jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET TimeZone = 'UTC' AS $fn$
DECLARE
    v_sent bigint;
BEGIN
    EXECUTE format(
        'SELECT count(pg_logical_emit_message(true, %L, json_build_object(%L, %s, %L, %s, %L, ARRAY[%s]::text[])::text)) FROM %s',
        'shardline.ddl_rows', 'ddl', p_id, 'part', p_part, 'row',
        (SELECT string_agg(format('%I::text', c), ', ' ORDER BY n)
           FROM jsonb_array_elements_text(p_change->'columns') WITH ORDINALITY AS e(c, n)),
        p_change->>'partition')
      INTO v_sent;
    RETURN v_sent;
END $fn$;

-- Writes one log row. SECURITY DEFINER: any role's DDL is logged, while
-- only the event trigger can write (pg_event_trigger_* fail elsewhere).
CREATE OR REPLACE FUNCTION shardline.ddl_record(p_event text, p_tag text, p_search_path text, p_role text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_key text := statement_timestamp()::text || ':' || md5(coalesce(current_query(), ''));
    v_counter text := 'shardline.ddl_seq_' || replace(lower(p_tag), ' ', '_');
    v_previous text := current_setting(v_counter, true);
    v_ordinal int := 0;
    v_objects jsonb;
    v_tables jsonb := '[]';
    v_partitions jsonb := '[]';
    v_id bigint;
BEGIN
    IF split_part(v_previous, '|', 1) = v_key THEN
        v_ordinal := split_part(v_previous, '|', 2)::int + 1;
    END IF;
    IF p_event = 'sql_drop' THEN
        -- Fires just before the command's ddl_command_end, which counts it.
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'type', d.object_type, 'identity', d.object_identity,
                   'schema', d.schema_name, 'name', d.object_name,
                   'address', to_jsonb(d.address_names), 'original', d.original,
                   'table', CASE WHEN d.object_type IN ('table', 'foreign table', 'table column', 'table constraint',
                                                        'default value', 'trigger', 'policy', 'rule')
                                 THEN quote_ident(d.address_names[1]) || '.' || quote_ident(d.address_names[2]) END)), '[]')
          INTO v_objects
          FROM pg_event_trigger_dropped_objects() d
         WHERE NOT d.is_temporary AND d.schema_name IS DISTINCT FROM 'shardline';
    ELSE
        -- Counted whether logged or not: a query's Nth command of a tag
        -- is its Nth statement of that tag.
        PERFORM set_config(v_counter, v_key || '|' || v_ordinal, false);
        WITH commands AS (
            SELECT c.*, CASE c.classid
                        WHEN 'pg_class'::regclass THEN (SELECT CASE WHEN r.relkind IN ('i', 'I') THEN (SELECT i.indrelid FROM pg_index i WHERE i.indexrelid = r.oid) ELSE r.oid END FROM pg_class r WHERE r.oid = c.objid)
                        WHEN 'pg_constraint'::regclass THEN (SELECT nullif(k.conrelid, 0) FROM pg_constraint k WHERE k.oid = c.objid)
                        WHEN 'pg_attrdef'::regclass THEN (SELECT d.adrelid FROM pg_attrdef d WHERE d.oid = c.objid)
                        WHEN 'pg_trigger'::regclass THEN (SELECT t.tgrelid FROM pg_trigger t WHERE t.oid = c.objid)
                        WHEN 'pg_statistic_ext'::regclass THEN (SELECT s.stxrelid FROM pg_statistic_ext s WHERE s.oid = c.objid)
                        END AS rel
              FROM pg_event_trigger_ddl_commands() c
             WHERE c.schema_name IS NULL
                OR (c.schema_name <> 'shardline' AND c.schema_name NOT LIKE 'pg\_temp%' AND c.schema_name NOT LIKE 'pg\_toast%')
        ), owners AS (
            SELECT DISTINCT rel FROM commands WHERE rel IS NOT NULL
        )
        SELECT coalesce((SELECT jsonb_agg(jsonb_build_object(
                   'type', c.object_type, 'identity', c.object_identity, 'schema', c.schema_name,
                   'tag', c.command_tag, 'subid', c.objsubid,
                   'table', (SELECT quote_ident(n.nspname) || '.' || quote_ident(r.relname) FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace WHERE r.oid = c.rel)))
                 FROM commands c), '[]'),
               coalesce((SELECT jsonb_agg(shardline.ddl_table(o.rel))
                 FROM owners o JOIN pg_class r ON r.oid = o.rel WHERE r.relkind IN ('r', 'p')), '[]')
          INTO v_objects, v_tables;
    END IF;
    IF v_objects = '[]' THEN
        RETURN;
    END IF;
    IF p_event = 'ddl_command_end' AND p_tag = 'ALTER TABLE' THEN
        -- NULL: the start's snapshot is missing, so what was attached or
        -- detached is unknown; cdc refuses an ATTACH or DETACH then.
        v_partitions := coalesce(shardline.ddl_partition_changes(md5(coalesce(current_query(), ''))),
                                 '[{"op": "unknown"}]');
    END IF;
    INSERT INTO shardline.ddl_log (event, command_tag, query, ordinal, search_path, role, objects, tables, partition_rows)
    VALUES (p_event, p_tag, current_query(), v_ordinal, p_search_path, p_role, v_objects, v_tables, v_partitions)
    RETURNING id INTO v_id;
    FOR i IN 0 .. jsonb_array_length(v_partitions) - 1 LOOP
        IF v_partitions->i->>'op' IN ('attach', 'detach') THEN
            PERFORM shardline.ddl_partition_rows(v_id, i, v_partitions->i);
        END IF;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE = '39P03' THEN
        -- Called outside an event trigger: nothing to log.
        RAISE;
    END IF;
    INSERT INTO shardline.ddl_log (event, command_tag, query, ordinal, search_path, role, error)
    VALUES (p_event, p_tag, current_query(), -1, p_search_path, p_role, SQLERRM || ' (' || SQLSTATE || ')');
END $fn$;
DO $do$
BEGIN
    IF NOT has_function_privilege('public', 'shardline.ddl_record(text, text, text, text)', 'EXECUTE') THEN
        GRANT EXECUTE ON FUNCTION shardline.ddl_record(text, text, text, text) TO PUBLIC;
    END IF;
END $do$;

-- The event trigger's function runs as the role that ran the command, so
-- it sees that role's search_path; it hands everything to ddl_record.
CREATE OR REPLACE FUNCTION shardline.ddl_capture() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM shardline.ddl_record(TG_EVENT, TG_TAG, current_setting('search_path'), current_user::text);
EXCEPTION WHEN OTHERS THEN
    -- Never fail the application's DDL; cdc notices the uncaptured change.
    RAISE WARNING 'shardline: DDL not captured: %', SQLERRM;
END $fn$;
-- At an ALTER TABLE's start: the partitions as they are, for its end to
-- compare (session-wide: DETACH … CONCURRENTLY ends in a transaction of
-- its own). Keyed by the query, so an end never reads another's.
CREATE OR REPLACE FUNCTION shardline.ddl_start() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_TAG = 'ALTER TABLE' THEN
        PERFORM set_config('shardline.ddl_partitions',
                           md5(coalesce(current_query(), '')) || '|' || shardline.ddl_partitions(), false);
    END IF;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'shardline: partitions not noted before the command: %', SQLERRM;
END $fn$;
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'shardline_ddl_start') THEN
        CREATE EVENT TRIGGER shardline_ddl_start ON ddl_command_start EXECUTE FUNCTION shardline.ddl_start();
    END IF;
    ALTER EVENT TRIGGER shardline_ddl_start ENABLE;
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'shardline_ddl_end') THEN
        CREATE EVENT TRIGGER shardline_ddl_end ON ddl_command_end EXECUTE FUNCTION shardline.ddl_capture();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'shardline_ddl_drop') THEN
        CREATE EVENT TRIGGER shardline_ddl_drop ON sql_drop EXECUTE FUNCTION shardline.ddl_capture();
    END IF;
    ALTER EVENT TRIGGER shardline_ddl_end ENABLE;
    ALTER EVENT TRIGGER shardline_ddl_drop ENABLE;
END $do$;
