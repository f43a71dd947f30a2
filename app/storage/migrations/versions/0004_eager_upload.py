"""What an eager multipart upload was created with (eager flush without a metadata copy).

Revision ID: 0004_eager_upload
Revises: 0003_parts
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_eager_upload"
down_revision: str | None = "0003_parts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("upload_sessions", sa.Column("eager_upload", sa.JSON))


def downgrade() -> None:
    op.drop_column("upload_sessions", "eager_upload")
