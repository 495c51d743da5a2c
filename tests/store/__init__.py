"""Tests of musecl_store.store: engines, migrations, model versions, the store check, query
plans, database faults and read replicas."""
