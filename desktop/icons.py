"""Small status icons drawn with QPainter, so the app ships no image files for them."""

from __future__ import annotations

from functools import cache

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap

COLORS = {
    "todo": "#8a8f98",
    "running": "#2f7fd8",
    "done": "#2e9d57",
    "stale": "#d08a12",
    "error": "#d0453a",
    "locked": "#b8bcc4",
}
STATES = tuple(COLORS)


@cache
def status_icon(state: str, size: int = 18) -> QIcon:
    """A circle marked for ``state``: todo, running, done, stale, error or locked."""
    color = QColor(COLORS.get(state, COLORS["todo"]))
    pixmap = QPixmap(size * 2, size * 2)  # drawn at 2x so it stays crisp on HiDPI screens
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    s = size * 2
    ring = QRectF(3, 3, s - 6, s - 6)
    _draw_state(painter, state, color, ring, s)
    painter.end()
    pixmap.setDevicePixelRatio(2.0)
    return QIcon(pixmap)


def _draw_state(painter: QPainter, state: str, color: QColor, ring: QRectF, s: int) -> None:
    width = s / 10
    if state in ("done", "error", "stale"):
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(color)
        painter.drawEllipse(ring)
        _draw_mark(painter, state, s)
        return
    pen = QPen(color, width)
    if state == "locked":
        pen.setStyle(Qt.PenStyle.DotLine)
    painter.setPen(pen)
    painter.setBrush(Qt.BrushStyle.NoBrush)
    painter.drawEllipse(ring)
    if state == "running":
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(color)
        painter.drawPie(ring.adjusted(width, width, -width, -width), 90 * 16, -180 * 16)


def _draw_mark(painter: QPainter, state: str, s: int) -> None:
    pen = QPen(
        QColor("white"), s / 9, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin
    )
    painter.setPen(pen)
    painter.setBrush(Qt.BrushStyle.NoBrush)
    if state == "done":
        path = QPainterPath(QPointF(s * 0.28, s * 0.52))
        path.lineTo(QPointF(s * 0.44, s * 0.67))
        path.lineTo(QPointF(s * 0.72, s * 0.36))
        painter.drawPath(path)
    elif state == "error":
        painter.drawLine(QPointF(s * 0.34, s * 0.34), QPointF(s * 0.66, s * 0.66))
        painter.drawLine(QPointF(s * 0.66, s * 0.34), QPointF(s * 0.34, s * 0.66))
    else:  # stale: an exclamation mark, "redo this step"
        painter.drawLine(QPointF(s * 0.5, s * 0.26), QPointF(s * 0.5, s * 0.56))
        painter.drawPoint(QPointF(s * 0.5, s * 0.72))
