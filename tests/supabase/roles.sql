-- The roles of a Supabase project, as supabase/postgres sets them up (written for these tests):
-- the cluster is bootstrapped by the superuser `supabase_admin`; `postgres` is an ordinary role
-- that bypasses RLS and owns what the project's migrations create; PostgREST logs in as
-- `authenticator` and switches to `anon`, `authenticated` or `service_role` per request; GoTrue
-- owns the `auth` schema as `supabase_auth_admin`. Run once per cluster, as supabase_admin.

CREATE ROLE postgres LOGIN NOSUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS;
CREATE ROLE anon NOLOGIN INHERIT;
CREATE ROLE authenticated NOLOGIN INHERIT;
CREATE ROLE service_role NOLOGIN INHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT;
GRANT anon, authenticated, service_role TO authenticator;
GRANT anon, authenticated, service_role TO postgres;
CREATE ROLE supabase_auth_admin LOGIN NOINHERIT CREATEROLE;
-- So that `postgres` can manage triggers on auth tables (supabase/postgres does the same).
GRANT supabase_auth_admin TO postgres;
