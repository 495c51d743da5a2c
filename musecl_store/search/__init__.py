"""Queries over the vectors: the FAISS index (a cache of the database), the search filters,
one query, many queries, and feature lookup by region id or point."""
