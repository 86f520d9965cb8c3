"""Alembic's environment: migrations run on the connection `serving.migrations` hands over, against the
tables declared in serving/schema.py."""

from alembic import context

from serving.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters tables by copying them
with context.begin_transaction():
    context.run_migrations()
