{#- Small cross-warehouse helpers, dispatched per adapter. -#}

{#- Timestamp with time zone (UTC instants). -#}
{% macro type_timestamptz() -%}
    {{ return(adapter.dispatch('type_timestamptz', 'nightshift')()) }}
{%- endmacro %}

{% macro default__type_timestamptz() -%}
    timestamp with time zone
{%- endmacro %}

{% macro snowflake__type_timestamptz() -%}
    timestamp_tz
{%- endmacro %}

{% macro bigquery__type_timestamptz() -%}
    timestamp
{%- endmacro %}

{#- Compare strings in byte order (the contract's tie-break), whatever the default collation. -#}
{% macro bytewise(expr) -%}
    {{ return(adapter.dispatch('bytewise', 'nightshift')(expr)) }}
{%- endmacro %}

{% macro default__bytewise(expr) -%}
    {{ expr }}
{%- endmacro %}

{% macro postgres__bytewise(expr) -%}
    {{ expr }} collate "C"
{%- endmacro %}

{#- `label` when the text is NULL or blank, else the text as it is. Blank = only ASCII
    whitespace (space, \t, \n, \r, \f, \v): the same rule as transform/daily_sales.py. -#}
{% macro coalesce_blank(expr, label) -%}
    case when {{ expr }} is null or {{ is_blank(expr) }} then '{{ label }}' else {{ expr }} end
{%- endmacro %}

{% macro is_blank(expr) -%}
    {{ return(adapter.dispatch('is_blank', 'nightshift')(expr)) }}
{%- endmacro %}

{% macro default__is_blank(expr) -%}
    regexp_matches({{ expr }}, '^[ \t\n\r\f\v]*$')
{%- endmacro %}

{% macro postgres__is_blank(expr) -%}
    ({{ expr }} ~ '^[ \t\n\r\f\v]*$')
{%- endmacro %}

{% macro snowflake__is_blank(expr) -%}
    regexp_like({{ expr }}, '^[ \\t\\n\\r\\f\\v]*$')
{%- endmacro %}

{% macro bigquery__is_blank(expr) -%}
    regexp_contains({{ expr }}, r'^[ \t\n\r\f\v]*$')
{%- endmacro %}

{#- The contracts' `varchar` (dbt.type_string() is `text` on PostgreSQL, which an
    incremental insert into a varchar column reports as a schema change). -#}
{% macro type_varchar() -%}
    {{ return(adapter.dispatch('type_varchar', 'nightshift')()) }}
{%- endmacro %}

{% macro default__type_varchar() -%}
    varchar
{%- endmacro %}

{% macro bigquery__type_varchar() -%}
    string
{%- endmacro %}

{#- The snapshot's "now" (dbt's snapshot_get_time, overridden here for this project) as the
    type of the users snapshot's updated_at, a timestamp with time zone. dbt-duckdb's and
    dbt-postgres' own give a naive timestamp, and dbt then warns on every build that the
    two types differ. -#}
{% macro duckdb__snapshot_get_time() -%}
    current_timestamp
{%- endmacro %}

{% macro postgres__snapshot_get_time() -%}
    now()
{%- endmacro %}
