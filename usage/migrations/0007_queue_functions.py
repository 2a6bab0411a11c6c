"""The queue's grant decisions as PostgreSQL functions (usage/queue.py): each call is one round
trip and one transaction, serialized by one advisory lock, so every gateway process and replica
sees one queue. SQLite serves a single process: its queue lives in memory (usage/queue.py)."""

from django.db import migrations

# pg_advisory_xact_lock key of the queue ("GPU" in hex, more or less).
LOCK = 0x6A7E0

# Which waiting request goes next, one at a time while one can: a key under its cap on a server
# with a free slot; the key with the fewest generations running first, then interactive before
# batch, then the key served least recently (so saturating keys take turns even on a server
# with one slot, where "fewest running" is always a tie), then first come. A batch request waits while an interactive one (not held back by its
# own key's cap) waits for the same server. Expired leases (a killed process) are reaped first.
GRANT = """
CREATE OR REPLACE FUNCTION gateway_queue_grant() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    chosen bigint;
    chosen_key bigint;
BEGIN
    DELETE FROM usage_slot WHERE expires_at < now();
    LOOP
        SELECT w.id INTO chosen FROM usage_slot w
        WHERE w.granted_at IS NULL
          AND (w.parallel IS NULL OR (
                SELECT count(*) FROM usage_slot s
                WHERE s.backend = w.backend AND s.granted_at IS NOT NULL) < w.parallel)
          AND (w.max_concurrent IS NULL OR (
                SELECT count(*) FROM usage_slot s
                WHERE s.key_id = w.key_id AND s.granted_at IS NOT NULL) < w.max_concurrent)
          AND (w.priority = 'interactive' OR NOT EXISTS (
                SELECT 1 FROM usage_slot i
                WHERE i.backend = w.backend AND i.granted_at IS NULL
                  AND i.priority = 'interactive'
                  AND (i.max_concurrent IS NULL OR (
                        SELECT count(*) FROM usage_slot s
                        WHERE s.key_id = i.key_id AND s.granted_at IS NOT NULL
                      ) < i.max_concurrent)))
        ORDER BY (SELECT count(*) FROM usage_slot s
                  WHERE s.key_id = w.key_id AND s.granted_at IS NOT NULL),
                 w.priority <> 'interactive',
                 (SELECT t.granted_at FROM usage_queue_turn t WHERE t.key_id = w.key_id)
                     NULLS FIRST,
                 w.enqueued_at, w.id
        LIMIT 1;
        EXIT WHEN chosen IS NULL;
        UPDATE usage_slot SET granted_at = clock_timestamp() WHERE id = chosen
        RETURNING key_id INTO chosen_key;
        INSERT INTO usage_queue_turn (key_id, granted_at) VALUES (chosen_key, clock_timestamp())
        ON CONFLICT (key_id) DO UPDATE SET granted_at = excluded.granted_at;
        PERFORM pg_notify('gateway_queue', chosen::text);
    END LOOP;
END $$;
"""

# A request arrives: it runs at once when nobody waits for its server or its key and both have
# room (the fast path: an index probe or two and an insert); otherwise it joins the queue and
# the grant decides. Returns whether it runs now.
ENTER = f"""
CREATE OR REPLACE FUNCTION gateway_queue_enter(
    p_id bigint, p_backend text, p_key bigint, p_priority text, p_max integer,
    p_parallel integer, p_holder text, p_lease double precision
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({LOCK});
    IF NOT EXISTS (
            SELECT 1 FROM usage_slot WHERE granted_at IS NULL
            AND (backend = p_backend OR key_id = p_key))
       AND (p_parallel IS NULL OR (
            SELECT count(*) FROM usage_slot
            WHERE backend = p_backend AND granted_at IS NOT NULL AND expires_at >= now()
            ) < p_parallel)
       AND (p_max IS NULL OR (
            SELECT count(*) FROM usage_slot
            WHERE key_id = p_key AND granted_at IS NOT NULL AND expires_at >= now()) < p_max)
    THEN
        INSERT INTO usage_slot (id, backend, key_id, priority, max_concurrent, parallel, holder,
                                enqueued_at, granted_at, expires_at)
        VALUES (p_id, p_backend, p_key, p_priority, p_max, p_parallel, p_holder,
                now(), now(), now() + make_interval(secs => p_lease));
        RETURN true;
    END IF;
    INSERT INTO usage_slot (id, backend, key_id, priority, max_concurrent, parallel, holder,
                            enqueued_at, expires_at)
    VALUES (p_id, p_backend, p_key, p_priority, p_max, p_parallel, p_holder,
            clock_timestamp(), now() + make_interval(secs => p_lease));
    PERFORM gateway_queue_grant();
    RETURN (SELECT granted_at IS NOT NULL FROM usage_slot WHERE id = p_id);
END $$;
"""

# A generation ended (or its request went away): its row goes, and the next in line runs.
RELEASE = f"""
CREATE OR REPLACE FUNCTION gateway_queue_release(p_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({LOCK});
    DELETE FROM usage_slot WHERE id = p_id;
    PERFORM gateway_queue_grant();
END $$;
"""

# The queue timeout: leave, unless granted meanwhile (-1: run after all). Otherwise returns
# the generations the key runs now (its cap was the blocker when that reaches it).
LEAVE = f"""
CREATE OR REPLACE FUNCTION gateway_queue_leave(p_id bigint, p_key bigint) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({LOCK});
    IF EXISTS (SELECT 1 FROM usage_slot WHERE id = p_id AND granted_at IS NOT NULL) THEN
        RETURN -1;
    END IF;
    DELETE FROM usage_slot WHERE id = p_id;
    PERFORM gateway_queue_grant();
    RETURN (SELECT count(*) FROM usage_slot WHERE key_id = p_key AND granted_at IS NOT NULL);
END $$;
"""

# The slow safety re-check of a waiting request (a lost notification, a killed process's
# leases): reap, grant, and say whether this one runs now (NULL: its row is gone).
CHECK = f"""
CREATE OR REPLACE FUNCTION gateway_queue_check(p_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({LOCK});
    PERFORM gateway_queue_grant();
    RETURN (SELECT granted_at IS NOT NULL FROM usage_slot WHERE id = p_id);
END $$;
"""

# A process renews its leases; under the queue's lock, like every write, so that it never
# contends with a decision reaping or granting the same rows (no deadlock).
RENEW = f"""
CREATE OR REPLACE FUNCTION gateway_queue_renew(p_holder text, p_lease double precision)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({LOCK});
    UPDATE usage_slot SET expires_at = now() + make_interval(secs => p_lease)
    WHERE holder = p_holder;
END $$;
"""

# The queue's rows are leases that expire within seconds: written without WAL, a decision
# commits without waiting for a disk flush (the empty-queue check drops from ~0.35 ms to
# ~0.1 ms). A database crash empties them, as it ends every request they describe.
UNLOGGED = "ALTER TABLE usage_slot SET UNLOGGED; ALTER TABLE usage_queue_turn SET UNLOGGED;"
LOGGED = "ALTER TABLE usage_slot SET LOGGED; ALTER TABLE usage_queue_turn SET LOGGED;"
FUNCTIONS = (UNLOGGED, GRANT, ENTER, RELEASE, LEAVE, CHECK, RENEW)
DROP = """
DROP FUNCTION IF EXISTS gateway_queue_renew(text, double precision);
DROP FUNCTION IF EXISTS gateway_queue_check(bigint);
DROP FUNCTION IF EXISTS gateway_queue_leave(bigint, bigint);
DROP FUNCTION IF EXISTS gateway_queue_release(bigint);
DROP FUNCTION IF EXISTS gateway_queue_enter(
    bigint, text, bigint, text, integer, integer, text, double precision);
DROP FUNCTION IF EXISTS gateway_queue_grant();
""" + LOGGED


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in FUNCTIONS:
            schema_editor.execute(sql)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("usage", "0006_queue")]

    operations = [migrations.RunPython(create, drop)]
