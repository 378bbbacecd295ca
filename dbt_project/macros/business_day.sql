{#- Calendar date of a UTC timestamp in the report time zone (var report_tz). -#}
{% macro business_day(ts, tz=none) -%}
    {%- set tz = tz or var('report_tz') -%}
    {%- if not modules.re.match('^[A-Za-z0-9_+/-]+$', tz) -%}
        {{ exceptions.raise_compiler_error("report_tz " ~ tz ~ " is not an IANA time zone name") }}
    {%- endif -%}
    {{ return(adapter.dispatch('business_day', 'nightshift')(ts, tz)) }}
{%- endmacro %}

{% macro default__business_day(ts, tz) -%}
    cast(timezone('{{ tz }}', {{ ts }}) as date)
{%- endmacro %}

{% macro duckdb__business_day(ts, tz) -%}
    cast(timezone('{{ tz }}', {{ ts }}) as date)
{%- endmacro %}

{% macro postgres__business_day(ts, tz) -%}
    ({{ ts }} at time zone '{{ tz }}')::date
{%- endmacro %}

{% macro snowflake__business_day(ts, tz) -%}
    cast(convert_timezone('{{ tz }}', {{ ts }}) as date)
{%- endmacro %}

{% macro bigquery__business_day(ts, tz) -%}
    date({{ ts }}, '{{ tz }}')
{%- endmacro %}
