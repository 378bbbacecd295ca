{#- An exact decimal type of `precision` digits, `scale` of them after the point.
    `decimal(p, s)` on DuckDB, PostgreSQL and Snowflake. BigQuery has no DECIMAL(38, 18):
    its NUMERIC(P, S) takes 0 <= S <= 9 and P <= S + 29, BIGNUMERIC(P, S) takes
    0 <= S <= 38 and P <= S + 38, so the macro gives the smaller of the two that holds
    the type, and an error when neither does. Both check the bounds when the SQL is
    compiled, not only when BigQuery runs it. -#}
{% macro nightshift_decimal(precision, scale=0) -%}
    {%- if precision is not number or scale is not number
        or precision < 1 or scale < 0 or scale > precision -%}
        {{ exceptions.raise_compiler_error(
            "nightshift_decimal(" ~ precision ~ ", " ~ scale ~ "): need 1 <= precision and 0 <= scale <= precision") }}
    {%- endif -%}
    {{ return(adapter.dispatch('nightshift_decimal', 'nightshift')(precision, scale)) }}
{%- endmacro %}

{% macro default__nightshift_decimal(precision, scale) -%}
    decimal({{ precision }}, {{ scale }})
{%- endmacro %}

{% macro bigquery__nightshift_decimal(precision, scale) -%}
    {%- if scale <= 9 and precision <= scale + 29 -%}
        numeric({{ precision }}, {{ scale }})
    {%- elif scale <= 38 and precision <= scale + 38 -%}
        bignumeric({{ precision }}, {{ scale }})
    {%- else -%}
        {{ exceptions.raise_compiler_error(
            "decimal(" ~ precision ~ ", " ~ scale ~ ") has no BigQuery type: NUMERIC needs scale <= 9 and precision <= scale + 29, BIGNUMERIC scale <= 38 and precision <= scale + 38") }}
    {%- endif -%}
{%- endmacro %}
