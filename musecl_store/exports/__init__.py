"""Files out of the store: embeddings as CSV, GeoJSON or GeoParquet, and choropleth maps."""
