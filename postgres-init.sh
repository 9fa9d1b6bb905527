#!/usr/bin/env bash
# Postgres first-start script (docker-entrypoint-initdb.d): the schema, the plugin's login role
# (read-only, its password taken from DATABASE_URL in kong.env), and one demo customer.
set -euo pipefail
schema_dir=${SCHEMA_DIR:-/schema}

credentials=${DATABASE_URL#*://}
credentials=${credentials%%@*}
plugin_user=${credentials%%:*}
plugin_password=${credentials#*:}

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f "$schema_dir/customer_schema.sql"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v plugin_user="$plugin_user" -v plugin_password="$plugin_password" -f "$schema_dir/demo_data.sql"
