"""The SHA-256 state after each eager part, so any replica resumes the file's hash.

Revision ID: 0007_part_hash_state
Revises: 0006_tus
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_part_hash_state"
down_revision: str | None = "0006_tus"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Both NULL on rows written before (and when the hasher cannot export its state):
    # such a part's prefix is hashed by reading it back, as before.
    op.add_column("upload_parts", sa.Column("sha256_state", sa.String(80)))
    op.add_column("upload_parts", sa.Column("layout_sha256", sa.String(64)))


def downgrade() -> None:
    op.drop_column("upload_parts", "layout_sha256")
    op.drop_column("upload_parts", "sha256_state")
