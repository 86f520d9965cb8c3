"""The videos domain: requests parsed into generation parameters, the service, and watching progress."""

from serving.control_plane.progress import Progress
from serving.videos.parsing import CreateVideo, RemixVideo
from serving.videos.service import DispatcherLink, Download, Page, VideoService

__all__ = ["CreateVideo", "DispatcherLink", "Download", "Page", "Progress", "RemixVideo", "VideoService"]
