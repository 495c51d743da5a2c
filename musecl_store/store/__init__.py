"""The database: engine and write lock, dialect differences, column types, tables, schema
migrations, cities, model versions, stored vectors, and the store check. The lowest room:
it imports only the leaf modules (errors, settings, geo...)."""
