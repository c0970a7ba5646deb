"""The Inspect step's table: one row per weight tensor, sortable and filterable.

``TensorTableModel`` mirrors a core.weights.inspect.InspectReport; ``TensorFilterProxy`` sorts
numbers as numbers (NaN and missing values last in either order) and filters by text and module
type; ``TensorTable`` puts them in a view with a filter box and a module-type combo.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QItemSelectionModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    Signal,
    Slot,
)
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from desktop.icons import status_icon

SORT_ROLE = Qt.ItemDataRole.UserRole + 1
NAME_ROLE = Qt.ItemDataRole.UserRole + 2
ALL_MODULES = "All module types"
NONE = "—"  # shown for a value that does not exist (no layer, NaN statistic)

# Flags that make a tensor unusable as it is (red) or special (amber); "embedding"/"head"
# flags are information only.
_ERROR_FLAGS = ("NaN/Inf",)
_WARN_FLAGS = ("integer", "boolean", "all zero", "empty", "single value")
ERROR_BG = QColor("#fbe3e1")
WARN_BG = QColor("#fdf1dc")
DISAGREE_FG = QColor("#a65d00")


def severity(flags: list[str]) -> str:
    """ "error", "warning" or "" for a tensor's flags."""
    if any(marker in f for f in flags for marker in _ERROR_FLAGS):
        return "error"
    if any(f.startswith(_WARN_FLAGS) for f in flags):
        return "warning"
    return ""


def _num(value: Any) -> float:
    """A sortable float; NaN for missing values."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fmt(value: Any, spec: str = ".4g") -> str:
    number = _num(value)
    if math.isnan(number):
        return NONE
    if math.isinf(number):
        return "∞" if number > 0 else "−∞"
    return format(number, spec)


def percent(share: Any) -> str:
    number = _num(share)
    return NONE if math.isnan(number) else f"{100 * number:.3g}%"


@dataclass(frozen=True)
class Column:
    title: str
    value: Callable[[Any, float], Any]  # (TensorReport, k) -> raw value for sorting
    text: Callable[[Any], str] = fmt  # raw value -> cell text
    numeric: bool = True
    tip: str = ""


def _rule(t: Any, k: float) -> str:
    return {True: "symmetric", False: "asymmetric", None: NONE}[t.recommendation.rule_symmetric]


def _agree(t: Any, k: float) -> str:
    return {True: "yes", False: "no", None: NONE}[t.recommendation.agree]


def _best_sqnr(t: Any, k: float) -> float:
    best = t.recommendation.best
    return best.sqnr_db if best is not None else math.nan


def _count(value: Any) -> str:
    return f"{value:,}" if value < 100_000 else f"{value / 1e6:.3g} M"


COLUMNS: tuple[Column, ...] = (
    Column("Name", lambda t, k: t.stats.name, str, False),
    Column("Layer", lambda t, k: t.stats.layer, lambda v: NONE if v is None else str(v)),
    Column("Module", lambda t, k: t.stats.module, str, False),
    Column("Shape", lambda t, k: "×".join(map(str, t.stats.shape)), str, False),
    Column("Params", lambda t, k: t.stats.params, _count),
    Column("Mean", lambda t, k: t.stats.mean, lambda v: fmt(v, ".3g")),
    Column("Std", lambda t, k: t.stats.std, lambda v: fmt(v, ".3g")),
    Column("Min", lambda t, k: t.stats.min, lambda v: fmt(v, ".3g")),
    Column("Max", lambda t, k: t.stats.max, lambda v: fmt(v, ".3g")),
    Column("Abs-max", lambda t, k: t.stats.absmax, lambda v: fmt(v, ".3g")),
    Column("Skewness", lambda t, k: t.stats.skew, lambda v: fmt(v, ".3g")),
    Column("Excess kurtosis", lambda t, k: t.stats.kurtosis, lambda v: fmt(v, ".3g"), tip="0 for a Gaussian"),
    Column("Outliers", lambda t, k: t.stats.outlier_share(k), percent, tip="share beyond k·std of the mean"),
    Column("Zeros", lambda t, k: t.stats.zero_share, percent, tip="share of exact zeros"),
    Column(
        "Channel spread",
        lambda t, k: t.stats.channel_spread,
        lambda v: fmt(v, ".3g"),
        tip="max over median of the per-output-channel abs-max",
    ),
    Column("Flags", lambda t, k: "; ".join(t.stats.flags), str, False),
    Column("Rule", _rule, str, False, "the rule of thumb's verdict"),
    Column("Recommendation", lambda t, k: t.recommendation.label, str, False, "the measurement decides"),
    Column("Agree?", _agree, str, False, "do the rule and the measurement agree?"),
    Column("Best SQNR dB", _best_sqnr, lambda v: fmt(v, ".1f"), tip="of the recommended scheme"),
)
# Narrow headers for wide titles; the full title is the tooltip.
SHORT = {"Excess kurtosis": "Ex. kurtosis", "Channel spread": "Ch. spread", "Best SQNR dB": "Best SQNR"}
COL = {c.title: i for i, c in enumerate(COLUMNS)}
OUTLIER_COLUMN = COL["Outliers"]


class TensorTableModel(QAbstractTableModel):
    """Rows of an InspectReport (or none); ``set_k`` refreshes only the outlier column."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._tensors: list[Any] = []
        self._levels: list[str] = []
        self._k = 3.0

    # -- filling --------------------------------------------------------------------------
    def set_report(self, report: Any | None) -> None:
        self.beginResetModel()
        self._tensors = list(report.tensors) if report is not None else []
        self._levels = [severity(t.stats.flags) for t in self._tensors]  # data() asks per cell
        self.endResetModel()

    def set_k(self, k: float) -> None:
        self._k = k
        self.headerDataChanged.emit(Qt.Orientation.Horizontal, OUTLIER_COLUMN, OUTLIER_COLUMN)
        if self._tensors:
            top, bottom = self.index(0, OUTLIER_COLUMN), self.index(len(self._tensors) - 1, OUTLIER_COLUMN)
            self.dataChanged.emit(top, bottom)

    def tensor(self, row: int) -> Any:
        return self._tensors[row]

    def row_of(self, name: str) -> int:
        return next((i for i, t in enumerate(self._tensors) if t.stats.name == name), -1)

    # -- QAbstractTableModel --------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._tensors)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Vertical:  # the row's name (see TensorTable)
            if not 0 <= section < len(self._tensors):
                return None
            if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
                return self._tensors[section].stats.name
            if role == Qt.ItemDataRole.TextAlignmentRole:
                return int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
            return None
        if not 0 <= section < len(COLUMNS):
            return None
        column = COLUMNS[section]
        if role == Qt.ItemDataRole.DisplayRole:
            return (
                f"> {self._k:g}·std" if section == OUTLIER_COLUMN else SHORT.get(column.title, column.title)
            )
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{column.title}: {column.tip}" if column.tip else column.title
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        t, column = self._tensors[index.row()], COLUMNS[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            return column.text(column.value(t, self._k))
        if role == SORT_ROLE:
            raw = column.value(t, self._k)
            return _num(raw) if column.numeric else str(raw).lower()
        if role == NAME_ROLE:
            return t.stats.name
        return self._decoration(t, self._levels[index.row()], index.column(), role)

    def _decoration(self, t: Any, level: str, column: int, role: int):
        if role == Qt.ItemDataRole.BackgroundRole and level:
            return QBrush(ERROR_BG if level == "error" else WARN_BG)
        if role == Qt.ItemDataRole.DecorationRole and column == COL["Flags"] and level:
            return status_icon("error" if level == "error" else "stale")
        if (
            role == Qt.ItemDataRole.ForegroundRole
            and column == COL["Agree?"]
            and t.recommendation.agree is False
        ):
            return QBrush(DISAGREE_FG)
        if role == Qt.ItemDataRole.ToolTipRole:
            return "\n".join([t.stats.name, *t.stats.flags, t.recommendation.rule_reason])
        if role == Qt.ItemDataRole.TextAlignmentRole and COLUMNS[column].numeric:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class TensorFilterProxy(QSortFilterProxyModel):
    """Numeric sort with missing values last in both orders; filter by text and module type."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._text = ""
        self._module = ""
        self.setSortRole(SORT_ROLE)

    def set_text(self, text: str) -> None:
        self._refilter(lambda: setattr(self, "_text", text.strip().lower()))

    def set_module(self, module: str) -> None:
        self._refilter(lambda: setattr(self, "_module", module))

    def _refilter(self, change: Callable[[], None]) -> None:
        # Qt 6.10 replaced invalidateFilter() (now deprecated) by begin/endFilterChange().
        if hasattr(self, "beginFilterChange"):
            self.beginFilterChange()
            change()
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            change()
            self.invalidateRowsFilter()

    def filterAcceptsRow(self, row: int, parent: QModelIndex | QPersistentModelIndex) -> bool:  # noqa: N802
        model = self.sourceModel()
        t = model.tensor(row)
        if self._module and t.stats.module != self._module:
            return False
        return not self._text or self._text in t.stats.name.lower() or self._text in t.stats.module.lower()

    def lessThan(
        self, left: QModelIndex | QPersistentModelIndex, right: QModelIndex | QPersistentModelIndex
    ) -> bool:  # noqa: N802
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        if isinstance(a, float) and isinstance(b, float):
            # Qt reverses lessThan for a descending sort: "missing is largest" ascending and
            # "missing is smallest" descending keep missing values at the bottom both ways.
            missing_last = self.sortOrder() == Qt.SortOrder.AscendingOrder
            if math.isnan(a) or math.isnan(b):
                if math.isnan(a) and math.isnan(b):
                    return False
                return math.isnan(b) if missing_last else math.isnan(a)
        return a < b


class TensorTable(QWidget):
    """Filter row and table. ``tensorSelected(name)`` when the current row changes."""

    tensorSelected = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = TensorTableModel(self)
        self.proxy = TensorFilterProxy(self)
        self.proxy.setSourceModel(self.model)
        self.filter_edit = QLineEdit(placeholderText="Filter by name or module…", clearButtonEnabled=True)
        self.module_combo = QComboBox()
        self.module_combo.addItem(ALL_MODULES, "")
        self.count_label = QLabel()
        self.count_label.setObjectName("hint")
        self.view = self._make_view()
        filters = QHBoxLayout()
        filters.addWidget(self.filter_edit, 2)
        filters.addWidget(self.module_combo, 1)
        filters.addWidget(self.count_label)
        self.filter_row = filters
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(filters)
        layout.addWidget(self.view, 1)
        self.filter_edit.textChanged.connect(self._on_text)
        self.module_combo.currentIndexChanged.connect(self._on_module)
        self.view.selectionModel().currentRowChanged.connect(self._on_current)
        self.proxy.rowsInserted.connect(self._update_count)
        self.proxy.rowsRemoved.connect(self._update_count)
        self.proxy.modelReset.connect(self._update_count)
        self._update_count()

    def _make_view(self) -> QTableView:
        view = QTableView()
        view.setModel(self.proxy)
        view.setSortingEnabled(True)
        view.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # the checkpoint's order until asked
        view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        view.setAlternatingRowColors(True)
        view.setWordWrap(False)
        # The table is wider than the window: the names sit in the row header, which stays in
        # place while the columns scroll (the Name column stays hidden, for sorting by name).
        rows = view.verticalHeader()
        rows.setDefaultSectionSize(view.fontMetrics().height() + 8)
        rows.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        rows.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # names differ in the middle
        rows.setMaximumWidth(300)
        view.setColumnHidden(COL["Name"], True)
        header = view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setHighlightSections(False)
        header.setSectionsMovable(True)
        # Fitting columns reads every cell of every row: a sample of rows is enough (and keeps
        # a model with thousands of tensors from stalling the window).
        header.setResizeContentsPrecision(64)
        header.sortIndicatorChanged.connect(self._show_sorted_column)
        return view

    # -- filling --------------------------------------------------------------------------
    def set_report(self, report: Any | None) -> None:
        current = self.current_name()
        self.model.set_report(report)
        modules = sorted({t.stats.module for t in report.tensors}) if report is not None else []
        chosen = self.module_combo.currentData()
        self.module_combo.blockSignals(True)
        self.module_combo.clear()
        self.module_combo.addItem(ALL_MODULES, "")
        for module in modules:
            self.module_combo.addItem(module, module)
        self.module_combo.setCurrentIndex(max(0, self.module_combo.findData(chosen)))
        self.module_combo.blockSignals(False)
        self.proxy.set_module(self.module_combo.currentData() or "")
        if report is not None:
            self._size_columns()
        if current and self.model.row_of(current) >= 0:
            self.select(current)

    def _size_columns(self) -> None:
        self.view.resizeColumnsToContents()
        header = self.view.horizontalHeader()
        header.resizeSection(COL["Flags"], min(header.sectionSize(COL["Flags"]), 160))

    def set_k(self, k: float) -> None:
        self.model.set_k(k)

    # -- selection ------------------------------------------------------------------------
    def current_name(self) -> str | None:
        index = self.view.currentIndex()
        return index.data(NAME_ROLE) if index.isValid() else None

    def select(self, name: str) -> bool:
        """Make ``name`` the current row (clearing filters that hide it); False if unknown."""
        row = self.model.row_of(name)
        if row < 0:
            return False
        index = self.proxy.mapFromSource(self.model.index(row, 0))
        if not index.isValid():
            self.filter_edit.clear()
            self.module_combo.setCurrentIndex(0)
            index = self.proxy.mapFromSource(self.model.index(row, 0))
        # The current cell is taken in the leftmost column in view: the view scrolls to it, and
        # the columns in view (the one just sorted by) must stay where they are.
        index = index.siblingAtColumn(max(self.view.columnAt(0), 0))
        flags = QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows
        self.view.selectionModel().setCurrentIndex(index, flags)
        self.view.scrollTo(index)
        return True

    def select_row(self, proxy_row: int) -> bool:
        index = self.proxy.index(proxy_row, 0)
        return index.isValid() and self.select(index.data(NAME_ROLE))

    def sort_by(self, title: str, order: Qt.SortOrder = Qt.SortOrder.DescendingOrder) -> None:
        self.view.sortByColumn(COL[title], order)

    def name_at(self, proxy_row: int) -> str | None:
        index = self.proxy.index(proxy_row, 0)
        return index.data(NAME_ROLE) if index.isValid() else None

    # -- slots ----------------------------------------------------------------------------
    @Slot(str)
    def _on_text(self, text: str) -> None:
        self.proxy.set_text(text)
        self._update_count()

    @Slot(int)
    def _on_module(self, index: int) -> None:
        self.proxy.set_module(self.module_combo.itemData(index) or "")
        self._update_count()

    @Slot(int, Qt.SortOrder)
    def _show_sorted_column(self, column: int, order: Qt.SortOrder) -> None:
        # The table is wider than the view: bring the column just sorted by into sight.
        top = max(self.view.rowAt(0), 0)
        if 0 <= column < len(COLUMNS) and self.proxy.rowCount():
            self.view.scrollTo(self.proxy.index(top, column))

    @Slot(QModelIndex, QModelIndex)
    def _on_current(self, current: QModelIndex, previous: QModelIndex) -> None:
        if current.isValid():
            self.tensorSelected.emit(current.data(NAME_ROLE))

    @Slot()
    def _update_count(self, *_: Any) -> None:
        shown, total = self.proxy.rowCount(), self.model.rowCount()
        self.count_label.setText(f"{total} tensors" if shown == total else f"{shown} of {total} tensors")
