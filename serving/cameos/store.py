"""Cameos, grants and owner notifications, in the shared database."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from serving.cameos.models import ANY_USER, Cameo, Grant, Notification
from serving.db import Database
from serving.errors import NotFound
from serving.schema import cameo_grants as grants
from serving.schema import cameo_notifications as notifications
from serving.schema import cameos


class CameoStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, cameo: Cameo) -> Cameo:
        with self.db.write() as conn:
            conn.execute(cameos.insert().values(**cameo.__dict__))
        return cameo

    def get(self, cameo_id: str) -> Cameo:
        with self.db.read() as conn:
            row = conn.execute(sa.select(cameos).where(cameos.c.id == cameo_id, cameos.c.deleted_at.is_(None))).first()
        if row is None:
            raise NotFound(f"cameo_id {cameo_id!r} not found: no such cameo", field="cameo_id")
        return _cameo(row)

    def owned(self, tenant: str, user: str) -> list[Cameo]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(cameos).where(cameos.c.owner_tenant == tenant, cameos.c.owner_user == user,
                                                        cameos.c.deleted_at.is_(None))
                                .order_by(cameos.c.created_at.desc())).all()
        return [_cameo(r) for r in rows]

    def delete(self, cameo_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(cameos.update().where(cameos.c.id == cameo_id).values(deleted_at=time.time()))
            conn.execute(grants.update().where(grants.c.cameo_id == cameo_id, grants.c.revoked_at.is_(None))
                         .values(revoked_at=time.time()))

    # -- consent -------------------------------------------------------------------------------
    def grant(self, cameo_id: str, tenant: str, user: str = ANY_USER) -> Grant:
        with self.db.write() as conn:
            live = conn.execute(sa.select(grants).where(
                grants.c.cameo_id == cameo_id, grants.c.tenant == tenant, grants.c.user == user,
                grants.c.revoked_at.is_(None))).first()
            if live is None:
                conn.execute(grants.insert().values(cameo_id=cameo_id, tenant=tenant, user=user,
                                                    granted_at=time.time()))
        return next(g for g in self.grants(cameo_id) if g.tenant == tenant and g.user == user and g.live)

    def revoke(self, cameo_id: str, tenant: str, user: str = ANY_USER) -> int:
        """Revoke live grants to (tenant, user); user ANY_USER revokes every grant to the tenant."""
        q = grants.update().where(grants.c.cameo_id == cameo_id, grants.c.tenant == tenant,
                                  grants.c.revoked_at.is_(None))
        if user != ANY_USER:
            q = q.where(grants.c.user == user)
        with self.db.write() as conn:
            return conn.execute(q.values(revoked_at=time.time())).rowcount

    def grants(self, cameo_id: str) -> list[Grant]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(grants).where(grants.c.cameo_id == cameo_id).order_by(grants.c.id)).all()
        return [Grant(cameo_id=r.cameo_id, tenant=r.tenant, user=r.user, granted_at=r.granted_at,
                      revoked_at=r.revoked_at) for r in rows]

    def may_use(self, cameo: Cameo, tenant: str, user: str) -> bool:
        """The owner always may; anyone else only under a live grant to them or to their whole tenant."""
        if (cameo.owner_tenant, cameo.owner_user) == (tenant, user):
            return True
        return any(g.live and g.tenant == tenant and g.user in (user, ANY_USER) for g in self.grants(cameo.id))

    # -- notifications ---------------------------------------------------------------------------
    def notify(self, cameo: Cameo, kind: str, video_id: str, creator_tenant: str, message: str = "") -> None:
        with self.db.write() as conn:
            conn.execute(notifications.insert().values(cameo_id=cameo.id, owner_tenant=cameo.owner_tenant,
                                                       at=time.time(), kind=kind, video_id=video_id,
                                                       creator_tenant=creator_tenant, message=message))

    def notifications(self, cameo_ids: list[str], *, after_id: int = 0, limit: int = 500) -> list[Notification]:
        if not cameo_ids:
            return []
        with self.db.read() as conn:
            rows = conn.execute(sa.select(notifications).where(notifications.c.cameo_id.in_(cameo_ids),
                                                               notifications.c.id > after_id)
                                .order_by(notifications.c.id).limit(limit)).all()
        return [Notification(id=r.id, cameo_id=r.cameo_id, at=r.at, kind=r.kind, video_id=r.video_id,
                             creator_tenant=r.creator_tenant, message=r.message) for r in rows]


def _cameo(row: Any) -> Cameo:
    return Cameo(id=row.id, owner_tenant=row.owner_tenant, owner_user=row.owner_user, name=row.name,
                 require_approval=bool(row.require_approval), consent_statement=row.consent_statement,
                 consent_at=row.consent_at, consent_key_id=row.consent_key_id, reference_key=row.reference_key,
                 voice_key=row.voice_key, created_at=row.created_at)
