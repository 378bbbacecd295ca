{#-
  `dbt source freshness` measured against the run's clock, not the warehouse's:
  `snapshotted_at` ("now") is DBT_NIGHTSHIFT_NOW, which warehouse/dbt_runner.py sets from
  core/clock.py (NIGHTSHIFT_NOW pins it), so a replay or a test sees the ages the
  night saw. Unset (a `dbt source freshness` by hand): the warehouse's current_timestamp.
  Overrides dbt's own `default__collect_freshness` (the root project comes first).
-#}
{% macro default__collect_freshness(source, loaded_at_field, filter) %}
    {%- set now = env_var('DBT_NIGHTSHIFT_NOW', '') -%}
    {%- if now and not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?[+]00:00$', now) -%}
        {{ exceptions.raise_compiler_error(
            "DBT_NIGHTSHIFT_NOW must be a UTC ISO-8601 instant like "
            ~ "2026-11-28T03:00:00+00:00, got '" ~ now ~ "'") }}
    {%- endif -%}
    {% call statement('collect_freshness', fetch_result=True, auto_begin=False) -%}
        select
            max({{ loaded_at_field }}) as max_loaded_at,
            {% if now -%}
                cast('{{ now }}' as {{ nightshift.type_timestamptz() }})
            {%- else -%}
                {{ current_timestamp() }}
            {%- endif %} as snapshotted_at
        from {{ source }}
        {% if filter -%}
            where {{ filter }}
        {%- endif %}
    {%- endcall %}
    {{ return(load_result('collect_freshness')) }}
{% endmacro %}
