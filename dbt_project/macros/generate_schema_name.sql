{#- Custom schemas are used as-is (`analytics`, not `<target schema>_analytics`), followed
    by DBT_NIGHTSHIFT_SCHEMA_SUFFIX (empty by default: the names stay as they are). A run
    on a server warehouse builds into private schemas `<schema>__build_<token>` that the
    publish renames (warehouse/backends/postgres.py); warehouse/dbt_runner.py sets the
    suffix `__build_<token>` for such a build. The sources (models/staging/_staging__sources.yml)
    and the snapshots (`+schema: snapshots`, dbt_project.yml) get the same suffix. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}{{ nightshift.schema_suffix() }}
    {%- endif -%}
{%- endmacro %}

{#- DBT_NIGHTSHIFT_SCHEMA_SUFFIX, checked: letters, digits and underscores only. -#}
{% macro schema_suffix() -%}
    {%- set suffix = env_var('DBT_NIGHTSHIFT_SCHEMA_SUFFIX', '') -%}
    {%- if not modules.re.match('^[A-Za-z0-9_]*$', suffix) -%}
        {{ exceptions.raise_compiler_error(
            "DBT_NIGHTSHIFT_SCHEMA_SUFFIX must be letters, digits and underscores only, got '"
            ~ suffix ~ "'") }}
    {%- endif -%}
    {{ return(suffix) }}
{%- endmacro %}
