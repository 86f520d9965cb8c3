"""The consent rule both videos and cameos apply: who may use a cameo, and who owns it."""

from __future__ import annotations

from serving.accounts import Principal
from serving.cameos.models import Cameo
from serving.cameos.store import CameoStore
from serving.errors import NotFound, PermissionDenied


def usable_cameo(store: CameoStore, principal: Principal, cameo_id: str) -> Cameo:
    """The cameo if the caller holds a live grant to it; PERMISSION_DENIED otherwise (checked before any stage)."""
    try:
        cameo = store.get(cameo_id)
    except NotFound:
        cameo = None
    if cameo is None or not store.may_use(cameo, principal.tenant_id, principal.user):
        raise PermissionDenied(f"cameo_id {cameo_id!r}: you hold no live grant to use this cameo", field="cameo_id")
    return cameo


def owns(principal: Principal, cameo: Cameo) -> bool:
    return (cameo.owner_tenant, cameo.owner_user) == (principal.tenant_id, principal.user)
