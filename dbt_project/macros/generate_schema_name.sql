{#- Where a model's custom schema (`+schema: staging`, ...) lands, by target:

    - the nightly's targets (var `production_targets`: duckdb, postgres, snowflake,
      bigquery, and sqlfluff's): the custom schema as-is (`analytics`, not
      `<target schema>_analytics`), followed by DBT_NIGHTSHIFT_SCHEMA_SUFFIX (empty by
      default). A run on a server warehouse builds into private schemas
      `<schema>__build_<token>` that the publish renames (warehouse/backends/postgres.py);
      warehouse/dbt_runner.py sets the suffix `__build_<token>` for such a build. The
      sources (models/staging/_staging__sources.yml) and the snapshots (`+schema:
      snapshots`, dbt_project.yml) get the same suffix.
    - any other target (a developer's `dev`): dbt's default `<target schema>_<custom>`,
      e.g. `dbt_alice_analytics`, so two people building against one shared warehouse
      never write each other's schemas, nor the published ones. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- elif target.name in var('production_targets') -%}
        {{ custom_schema_name | trim }}{{ nightshift.schema_suffix() }}
    {%- else -%}
        {{ target.schema }}_{{ custom_schema_name | trim }}
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
