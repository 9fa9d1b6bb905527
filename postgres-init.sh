#!/usr/bin/env bash
# Postgres first-start script (docker-entrypoint-initdb.d): the schema, the plugin's login role
# (read-only, its name and password taken from DATABASE_URL: PLUGIN_DB_PASSWORD in .env), and one
# demo customer.
# The postgres image runs it only when the data volume is empty: see docs/getting-started.md, "Run it with Docker Compose".
set -euo pipefail
schema_dir=${SCHEMA_DIR:-/schema}

percent_decode() {
    local text=${1//\\/\\\\}  # a literal backslash stays one
    printf '%b' "${text//%/\\x}"
}

# postgresql://user:password@host:port/db; '@', ':' and '%' inside user or password are
# percent-encoded (as libpq requires), so the first '@' ends the credentials.
credentials=${DATABASE_URL#*://}
credentials=${credentials%%@*}
plugin_user=$(percent_decode "${credentials%%:*}")
plugin_password=$(percent_decode "${credentials#*:}")

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f "$schema_dir/customer_schema.sql"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v plugin_user="$plugin_user" -v plugin_password="$plugin_password" -f "$schema_dir/demo_data.sql"
