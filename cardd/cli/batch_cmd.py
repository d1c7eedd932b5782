# SPDX-License-Identifier: Apache-2.0
"""`cardd batch burn ROSTER` and `cardd batch check ROSTER`: a whole class from a roster sheet.

The engine is cardd.rfid.batch (journal, resume rules, result sheets); the sheet rules are in
cardd.rfid.roster. This module is the operator's side: what is printed, what is asked.

Output: a rich progress bar with counts when stdout is a terminal; one plain line per event
otherwise (scripts, logs, and the integration tests, which react to the lines that start with
``  put a card`` and ``  take the card``). ID numbers are always shown masked; the full library
numbers are only in the result sheets, which are created with mode 0600.

Exit status: 0 every consenting student of the roster has a card; 1 some rows failed or were not
reached (run the same roster again to continue); 2 the roster has bad rows (nothing was burned)
or the command line is wrong; 130 interrupted (Ctrl-C), 143 stopped by SIGTERM; both resume on the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cardd.errors import CardError, UsageError

if TYPE_CHECKING:  # the configuration module is imported when a batch runs, not for --help
    import asyncio

    from cardd.config import Config

ON_ERROR = ("retry", "skip", "stop")
#: tries per student under ``--on-error retry`` before the student is skipped
MAX_TRIES = 3


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "batch",
        help="burn library numbers for a whole class from a roster sheet (xlsx, ods, csv)",
        description="Burn library numbers into the student cards of a whole class, one student "
        "after another, from the roster sheet the school filled in. Every row is checked before "
        "any card is touched; rows without consent are never burned; an interrupted batch "
        "resumes when the same roster is run again.",
    )
    s = p.add_subparsers(dest="batch_command", metavar="BATCHCOMMAND", required=True)
    burn = s.add_parser(
        "burn",
        help="burn the roster, student by student",
        description="Burn the roster student by student: put each student's card on the reader "
        "when asked, take it off when asked. Results go to a CSV and an XLSX sheet (mode 0600).",
    )
    check = s.add_parser("check", help="only read and check the roster; touch no card")
    for q in (burn, check):
        q.add_argument("roster", type=Path, metavar="ROSTER", help="the roster (.xlsx, .xls, .ods or .csv)")
        q.add_argument("--sheet", help="the worksheet to use (default: the first one with a header row)")
        q.add_argument("--id-column", metavar="NAME", help="header of the ID-number column (default: 身分證統一編號, 身分證字號, 身分證號, ID, ...)")
        q.add_argument("--name-column", metavar="NAME", help="header of the name column (default: 姓名)")
        q.add_argument("--class-column", metavar="NAME", help="header of the class column (default: 班級)")
        q.add_argument("--seat-column", metavar="NAME", help="header of the seat-number column (default: 座號)")
        q.add_argument("--consent-column", metavar="NAME", help="header of the consent column (default: [rfid] consent_column, 同意)")
        q.add_argument("--reissue-column", metavar="NAME", help="header of the optional reissue column (default: 補發)")
        q.add_argument("--skip-bad", action="store_true", help="burn the good rows even if some rows are bad (they are listed as invalid)")
    burn.add_argument("-r", "--reader", help="reader name, part of a name, or its number from `cardd readers`")
    burn.add_argument("--operator", help="your name for the ledger's audit log (default: the login name)")
    burn.add_argument("--results", type=Path, metavar="DIR", help="where the result sheets go (default: next to the journal, <state_dir>/batches)")
    burn.add_argument("--on-error", choices=ON_ERROR, help="what to do when a card fails, without asking (default: ask when stdin is a terminal, else stop)")
    burn.add_argument("--card-timeout", type=float, metavar="SECS", help="give up waiting for a card to be put on or taken off after SECS (default: wait)")
    burn.add_argument("-y", "--yes", action="store_true", help="start without asking for confirmation")


def _columns(config: Config, args: argparse.Namespace) -> Any:
    from cardd.rfid.roster import RosterColumns

    return RosterColumns.build(
        consent_column=args.consent_column or config.rfid.consent_column,
        explicit_consent=args.consent_column is not None,
        id_column=args.id_column,
        name_column=args.name_column,
        class_column=args.class_column,
        seat_column=args.seat_column,
        reissue_column=args.reissue_column,
    )


def run(config: Config, args: argparse.Namespace) -> int:
    from cardd.rfid.roster import read_roster

    roster = read_roster(args.roster, _columns(config, args), sheet=args.sheet)
    out = Output(tty=sys.stdout.isatty())
    _show_roster(out, roster)
    if roster.bad and not args.skip_bad:
        out.line(
            f"{len(roster.bad)} bad row(s): nothing was burned. Fix them in the sheet and run again, "
            "or pass --skip-bad to burn the other rows now."
        )
        return 2
    if args.batch_command == "check":
        out.line("The roster is ready to burn." if roster.to_burn else "No row is to be burned.")
        return 0
    if args.card_timeout is not None and args.card_timeout <= 0:
        raise UsageError("--card-timeout must be positive")
    if not roster.to_burn:
        out.line("No row is to be burned.")
        return 0
    interactive = sys.stdin.isatty()
    if not args.yes and not interactive:
        raise UsageError("standard input is not a terminal, so nobody can confirm: pass --yes")
    policy = args.on_error or (None if interactive else "stop")
    import asyncio

    try:
        return asyncio.run(_burn(config, args, roster, out, policy, interactive))
    except KeyboardInterrupt:
        return 130


def _show_roster(out: Output, roster: Any) -> None:
    where = f"sheet {roster.sheet!r}, " if roster.sheet else ""
    out.line(f"Roster {roster.path.name} ({roster.format}, {where}header on row {roster.header_row})")
    cols = ", ".join(f"{role} = {text} ({letter})" for role, (text, letter) in roster.columns.items())
    out.line(f"  columns: {cols}")
    out.line(
        f"  {len(roster.rows)} students: {len(roster.to_burn)} to burn, "
        f"{len(roster.no_consent)} without consent, {len(roster.bad)} bad"
    )
    for note in roster.notes:
        out.line(f"  note: {note}")
    if roster.bad:
        out.table(
            "Bad rows (every one of them; row numbers as the spreadsheet shows them)",
            ("row", "name", "ID", "problem"),
            [(str(r.row), r.name, r.masked_id, "; ".join(r.problems)) for r in roster.bad],
        )
    if roster.no_consent:
        out.table(
            "Without consent (never burned)",
            ("row", "name", "ID", "consent cell"),
            [(str(r.row), r.name, r.masked_id, r.consent_text or "(blank)") for r in roster.no_consent],
        )


async def _burn(
    config: Config, args: argparse.Namespace, roster: Any, out: Output, policy: str | None,
    interactive: bool,
) -> int:
    import asyncio

    from cardd.cli.readers_cmd import resolve_reader
    from cardd.daemon import build_backends
    from cardd.events import EventBus
    from cardd.readers.manager import ReaderManager
    from cardd.rfid.batch import BatchEngine, Journal, journal_path, write_results
    from cardd.rfid.station import RfidStation

    station = RfidStation(config)
    cards = station.cards  # the key file and the ledger, before any reader is touched
    journal = Journal(journal_path(config.state_dir, roster.path))
    operator = args.operator or os.environ.get("SUDO_USER") or getpass.getuser()
    bus = EventBus()
    manager = ReaderManager(build_backends(), bus, config.readers)
    await manager.start()
    try:
        await manager.wait_until(lambda: bool(manager.readers()), 3.0)
        reader = resolve_reader(args.reader, [r.name for r in manager.readers()])
        await _settle(manager, reader)
        out.line(f"Reader {reader!r}, station {cards.station!r}, operator {operator!r}")
        out.line(f"Journal {journal.path}" + (" (resuming)" if journal.runs else ""))
        if not args.yes:
            answer = await ask(out, f"Burn up to {len(roster.to_burn)} cards now? [y/N] ")
            if answer.strip().lower() not in ("y", "yes", "是"):
                out.line("Nothing was burned.")
                return 1
        ui = cli_ui(out, reader=reader, policy=policy, interactive=interactive)
        engine = BatchEngine(
            roster, cards=cards, manager=manager, reader=reader, operator=operator,
            journal=journal, ui=ui, skip_bad=args.skip_bad, card_timeout=args.card_timeout,
            bus=bus,
        )
        # SIGTERM (systemd stop, a shutdown, `kill`) ends the batch like Ctrl-C: the card being
        # written is finished by its worker thread (the burn is never cut between its APDUs by
        # us), the journal and the result sheets are written, and the next run resumes.
        terminated = False
        me = asyncio.current_task()

        def on_sigterm() -> None:
            nonlocal terminated
            terminated = True
            if me is not None:
                engine.request_stop(lambda: _cancel(me))

        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        try:
            report = await engine.run()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            report = engine.report()
        finally:
            ui.close()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGTERM)
        results_dir = args.results or journal.path.parent
        paths = write_results(report, results_dir)
        if report.interrupted:
            out.line("")  # after the ^C the terminal echoed
        _show_summary(out, report)
        out.line(
            "Results (mode 0600, readable only by you: they hold full library numbers, which "
            "contain the national ID numbers):"
        )
        for path in paths:
            out.line(f"  {path}")
        if report.interrupted:
            how = "Stopped by SIGTERM" if terminated else "Interrupted"
            out.line(f"{how}: run the same roster again to continue where it stopped.")
            return 143 if terminated else 130
        if not report.complete:
            out.line("Not every student has a card yet: run the same roster again to continue.")
            return 1
        return 0
    finally:
        # A burn already writing when Ctrl-C / SIGTERM came is finished by its worker thread;
        # wait for it (bounded) before the ledger closes under it, or its commit would fail.
        from cardd.supervision import drain_operations

        await drain_operations(manager, 15.0)
        await manager.stop()
        journal.close()
        station.close()


def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()


async def ask(out: Output, prompt: str) -> str:
    """Ask on a daemon thread.

    Ctrl-C at the prompt must end the batch and write its results; a worker of asyncio's default
    executor blocked in input() would keep asyncio.run from returning until Enter is pressed.
    """
    import asyncio
    import threading

    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def deliver(text: str | None, error: BaseException | None) -> None:
        if answer.done():
            return
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(text or "")

    def read() -> None:
        try:
            text, error = out.ask(prompt), None
        except (EOFError, OSError) as e:
            text, error = None, e
        try:
            loop.call_soon_threadsafe(deliver, text, error)
        except RuntimeError:
            pass  # the loop is gone

    threading.Thread(target=read, name="cardd-batch-prompt", daemon=True).start()
    return await answer


async def _settle(manager: Any, reader: str) -> None:
    """Let the manager learn whether a card already lies on the reader.

    The watcher announces the reader a moment before the card on it; a batch resuming after a
    crash must see that card (its interrupted burn is finished on it), not ask for another.
    """
    import asyncio

    from cardd.readers.pcsc import PcscBackend

    try:
        statuses = await asyncio.to_thread(PcscBackend().snapshot)
    except CardError:
        return
    if any(s.name == reader and s.card_present for s in statuses):
        await manager.wait_until(lambda: manager.reader(reader).card_present, 3.0)


def _show_summary(out: Output, report: Any) -> None:
    from cardd.rfid.batch import summarize

    c = report.counts
    out.line(f"Done {c.done} · failed {c.failed} · skipped {c.skipped} (of {len(report.results)} rows)")
    out.line("  " + ", ".join(f"{k} {v}" for k, v in sorted(summarize(report.results).items())))
    failed = [r for r in report.results if r.failed]
    if failed:
        out.table(
            "Failed",
            ("row", "name", "ID", "status", "why"),
            [(str(r.row.row), r.row.name, r.row.masked_id, r.status, r.detail) for r in failed],
        )


# -- output -------------------------------------------------------------------------------------


class Output:
    """Plain lines, or rich text above a progress bar when stdout is a terminal."""

    def __init__(self, *, tty: bool) -> None:
        self.tty = tty
        self.console: Any = None
        self.progress: Any = None
        if tty:
            from rich.console import Console

            self.console = Console(highlight=False)

    def _target(self) -> Any:
        return self.progress.console if self.progress is not None else self.console

    def line(self, text: str, style: str | None = None) -> None:
        if self.tty:
            self._target().print(text, style=style, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def table(self, title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        if not self.tty:
            # one line per row; the first cell is a row number: "  row 9  王小明  ..."
            print(f"{title}:", flush=True)
            for r in rows:
                print(f"  {header[0]} " + "  ".join(r), flush=True)
            return
        from rich.table import Table

        table = Table(*header, title=title, title_justify="left")
        for r in rows:
            table.add_row(*r)
        self._target().print(table)

    def ask(self, prompt: str) -> str:
        if self.progress is not None:
            self.progress.stop()
        try:
            if self.tty:
                return str(self.console.input(prompt, markup=False))
            print(prompt, end="", flush=True)
            return sys.stdin.readline()
        finally:
            if self.progress is not None:
                self.progress.start()


def cli_ui(out: Output, *, reader: str, policy: str | None, interactive: bool) -> Any:
    """The engine's hooks (cardd.rfid.batch.BatchUI) for a person at a terminal.

    Defined in a function so that `cardd --help` does not import the engine.
    """

    from cardd.rfid.batch import BatchUI, Decision
    from cardd.rfid.idnumber import mask_id

    class CliUI(BatchUI):
        def __init__(self, out: Output, *, reader: str, policy: str | None, interactive: bool) -> None:
            self.out = out
            self.reader = reader
            self.policy = policy
            self.interactive = interactive
            self._task: Any = None

        def close(self) -> None:
            if self.out.progress is not None:
                self.out.progress.stop()
                self.out.progress = None

        @staticmethod
        def _counts_text(counts: Any) -> str:
            return (
                f"done {counts.done} · failed {counts.failed} · skipped {counts.skipped} · "
                f"remaining {counts.remaining}"
            )

        def on_plan(self, plan: Any, counts: Any) -> None:
            out = self.out
            if plan.already:
                out.line(f"  {plan.already} student(s) already done in an earlier run of this roster")
            if plan.pending:
                out.line(f"  {plan.pending} interrupted burn(s) go first")
            if plan.refused:
                out.line(f"  {plan.refused} student(s) already have a working card (see the results)")
            out.line(f"  {counts.remaining} to burn now · {self._counts_text(counts)}")
            if out.tty:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

                out.progress = Progress(
                    TextColumn("[bold]batch"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[counts]}"),
                    console=out.console,
                )
                self._task = out.progress.add_task(
                    "batch", total=counts.total, completed=counts.total - counts.remaining,
                    counts=self._counts_text(counts),
                )
                out.progress.start()

        def on_notice(self, text: str) -> None:
            self.out.line(f"  note: {text}", style="yellow")

        def on_next(self, row: Any, index: int, total: int, note: str) -> None:
            self.out.line(f"[{index}/{total}] next: {row.label}", style="bold")
            if note:
                self.out.line(f"  {note}")

        async def on_waiting(self, row: Any) -> None:
            who = row.name or f"row {row.row}"
            self.out.line(f"  put a card on the reader for {who}")

        async def on_remove(self, row: Any, result: Any) -> None:
            self.out.line("  take the card off the reader")

        def on_result(self, result: Any, counts: Any) -> None:
            if result.done:
                text = f"  {result.status}: {mask_id(result.number or '')} on card {result.uid}"
                if result.detail:
                    text += f" ({result.detail})"
                self.out.line(text, style="green")
            else:
                self.out.line(f"  {result.status}: {result.detail}", style="red")
            if self.out.progress is not None and self._task is not None:
                self.out.progress.update(
                    self._task, completed=counts.total - counts.remaining,
                    counts=self._counts_text(counts),
                )
            else:
                self.out.line(f"  {self._counts_text(counts)}")

        async def on_error(self, row: Any, error: CardError, attempt: int) -> Decision:
            self.out.line(f"  error [{error.code}]: {error.message}", style="red")
            if error.hint:
                self.out.line(f"  next step: {error.hint}")
            if self.policy is None and self.interactive:
                while True:
                    answer = await ask(
                        self.out, "  [r]etry, [s]kip this student, or [q]uit the batch? "
                    )
                    choice = answer.strip().lower()[:1]
                    if choice in ("r", "s", "q"):
                        return {"r": Decision.RETRY, "s": Decision.SKIP, "q": Decision.STOP}[choice]
            decision = Decision(self.policy or "stop")
            if decision is Decision.RETRY and attempt >= MAX_TRIES:
                self.out.line(f"  giving up on this student after {attempt} tries")
                decision = Decision.SKIP
            self.out.line(f"  -> {decision.value} (--on-error)")
            return decision

    return CliUI(out, reader=reader, policy=policy, interactive=interactive)
