#!/usr/bin/env python3
"""Tally from Python: two accounts and a transfer over TLS with a bearer token.

A small client to copy from. It compiles the service's stubs from proto/tally/v1/tally.proto
with grpcio-tools (into a temporary directory, or --stubs DIR to keep them), connects to
`tally serve` over TLS, creates two accounts and one transfer between them, looks all three
up, reads the change events they made, and prints them.

Setup (once):

    bash scripts/python-env.sh            # a virtual environment at target/python
    tally token --name example --ledgers 840 \\
        --operations create_accounts,create_transfers,lookup_accounts,lookup_transfers,get_change_events \\
        --file tokens.jsonl               # prints the token

Run, against `tally serve --tls-cert server.pem --tls-key server.key --tokens tokens.jsonl`:

    TALLY_TOKEN=tly_... target/python/bin/python clients/python/tally_example.py \\
        --addr 127.0.0.1:7100 --ca ca.pem

Add `--cert client.pem --key client.key` when the server requires client certificates
(--tls-client-ca). Every 128-bit value (ids, amounts, balances) travels as a U128 message
{lo, hi} = hi * 2^64 + lo: see `to_u128` and `from_u128`. Exits non-zero when an event is
refused or a call fails.
"""

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_tools import protoc

LEDGER_DEFAULT = 840  # The ledger number is the application's choice (here: ISO 4217 USD).
CALL_TIMEOUT_S = 10.0
U64_MASK = (1 << 64) - 1


def compile_stubs(proto_dir: Path, out_dir: Path):
    """Generates tally/v1/tally_pb2{,_grpc}.py under out_dir; returns the two modules."""
    out_dir.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={proto_dir}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(proto_dir / "tally" / "v1" / "tally.proto"),
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed on {proto_dir} (exit {status})")
    sys.path.insert(0, str(out_dir))
    from tally.v1 import tally_pb2, tally_pb2_grpc  # noqa: E402 (generated just now)

    return tally_pb2, tally_pb2_grpc


def to_u128(pb, value: int):
    """A Python int in 0..2^128 as a U128 message."""
    if not 0 <= value < 1 << 128:
        raise ValueError(f"{value} does not fit in 128 unsigned bits")
    return pb.U128(lo=value & U64_MASK, hi=value >> 64)


def from_u128(message) -> int:
    """A U128 message as a Python int (an absent field reads as 0)."""
    return (message.hi << 64) | message.lo


def result_name(pb, code: int) -> str:
    """RESULT_CODE_EXCEEDS_CREDITS -> exceeds_credits."""
    return pb.ResultCode.Name(code).removeprefix("RESULT_CODE_").lower()


def connect(args) -> grpc.Channel:
    """A TLS channel that sends `authorization: Bearer <token>` with every call."""
    client_key = Path(args.key).read_bytes() if args.key else None
    client_cert = Path(args.cert).read_bytes() if args.cert else None
    tls = grpc.ssl_channel_credentials(
        root_certificates=Path(args.ca).read_bytes(),
        private_key=client_key,
        certificate_chain=client_cert,
    )
    token = grpc.access_token_call_credentials(args.token)
    credentials = grpc.composite_channel_credentials(tls, token)
    options = []
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    channel = grpc.secure_channel(args.addr, credentials, options=options)
    grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_S)
    return channel


def change_type_name(pb, event_type: int) -> str:
    """CHANGE_EVENT_TYPE_SINGLE_PHASE -> single_phase."""
    return pb.ChangeEventType.Name(event_type).removeprefix("CHANGE_EVENT_TYPE_").lower()


def print_change_events(pb, ledger_client, timestamp_min: int):
    """Prints the change events from timestamp_min on (one page): what each changed."""
    reply = ledger_client.GetChangeEvents(
        pb.ChangeEventsFilter(timestamp_min=timestamp_min, limit=100), timeout=CALL_TIMEOUT_S
    )
    for event in reply.events:
        kind = change_type_name(pb, event.type)
        if event.type == pb.CHANGE_EVENT_TYPE_ACCOUNT_CREATED:
            print(f"change {event.timestamp}: {kind} {from_u128(event.account.id)}")
        else:
            print(
                f"change {event.timestamp}: {kind} {from_u128(event.transfer.id)}"
                f" debit {from_u128(event.debit_account.id)}"
                f" debits_posted {from_u128(event.debit_account.debits_posted)}"
                f" credit {from_u128(event.credit_account.id)}"
                f" credits_posted {from_u128(event.credit_account.credits_posted)}"
            )


def check_results(pb, what: str, ids, reply) -> bool:
    """Prints one line per event; True when every event was applied."""
    all_ok = True
    for event_id, result in zip(ids, reply.results):
        name = result_name(pb, result.code)
        print(f"{what} {event_id}: {name}")
        all_ok = all_ok and result.code == pb.RESULT_CODE_OK
    return all_ok


def run(args, pb, rpc) -> bool:
    ledger = args.ledger
    debit_id, credit_id, transfer_id = args.first_id, args.first_id + 1, args.first_id + 2
    with connect(args) as channel:
        ledger_client = rpc.LedgerStub(channel)

        accounts = [
            pb.Account(id=to_u128(pb, account_id), ledger=ledger, code=1)
            for account_id in (debit_id, credit_id)
        ]
        reply = ledger_client.CreateAccounts(
            pb.CreateAccountsRequest(accounts=accounts), timeout=CALL_TIMEOUT_S
        )
        accounts_ok = check_results(pb, "account", (debit_id, credit_id), reply)
        # The first change of this run: later ones come after it.
        created = [r.timestamp for r in reply.results if r.code == pb.RESULT_CODE_OK]
        first_timestamp = min(created, default=0)

        transfer = pb.Transfer(
            id=to_u128(pb, transfer_id),
            debit_account_id=to_u128(pb, debit_id),
            credit_account_id=to_u128(pb, credit_id),
            amount=to_u128(pb, args.amount),
            ledger=ledger,
            code=1,
        )
        reply = ledger_client.CreateTransfers(
            pb.CreateTransfersRequest(transfers=[transfer]), timeout=CALL_TIMEOUT_S
        )
        transfer_ok = check_results(pb, "transfer", (transfer_id,), reply)

        ids = [to_u128(pb, account_id) for account_id in (debit_id, credit_id)]
        found = ledger_client.LookupAccounts(pb.LookupRequest(ids=ids), timeout=CALL_TIMEOUT_S)
        for account in found.accounts:
            print(
                f"lookup account {from_u128(account.id)}: ledger {account.ledger}"
                f" debits_posted {from_u128(account.debits_posted)}"
                f" credits_posted {from_u128(account.credits_posted)}"
            )
        found = ledger_client.LookupTransfers(
            pb.LookupRequest(ids=[to_u128(pb, transfer_id)]), timeout=CALL_TIMEOUT_S
        )
        for transfer in found.transfers:
            print(
                f"lookup transfer {from_u128(transfer.id)}:"
                f" {from_u128(transfer.debit_account_id)} ->"
                f" {from_u128(transfer.credit_account_id)}"
                f" amount {from_u128(transfer.amount)} timestamp {transfer.timestamp}"
            )
        print_change_events(pb, ledger_client, first_timestamp)
    return accounts_ok and transfer_ok


def parse_args():
    repo = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:7100", help="host:port of tally serve")
    parser.add_argument("--ca", required=True, help="PEM of the CA that signed the server")
    parser.add_argument("--cert", help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--key", help="client private key (PEM), for mutual TLS")
    parser.add_argument(
        "--server-name", help="name to verify in the server's certificate, if not the host"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TALLY_TOKEN"),
        help="bearer token (default: $TALLY_TOKEN; the environment keeps it out of `ps`)",
    )
    parser.add_argument("--ledger", type=int, default=LEDGER_DEFAULT)
    parser.add_argument(
        "--first-id",
        type=lambda text: int(text, 0),
        default=None,
        help="ids used: this, +1 (accounts) and +2 (transfer); default: random 120-bit",
    )
    parser.add_argument("--amount", type=int, default=1250, help="in minor units")
    parser.add_argument("--proto", default=str(repo / "proto"), help="the proto/ directory")
    parser.add_argument("--stubs", help="keep the generated stubs here (default: temporary)")
    args = parser.parse_args()
    if not args.token:
        parser.error("give --token or set TALLY_TOKEN")
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    if args.first_id is None:
        # Random ids: running the example twice creates new records, not `exists`.
        args.first_id = secrets.randbits(120) + 1
    return args


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="tally-stubs-") as temporary:
        pb, rpc = compile_stubs(Path(args.proto), Path(args.stubs or temporary))
        try:
            applied = run(args, pb, rpc)
        except grpc.RpcError as error:
            print(f"call failed: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2
        except grpc.FutureTimeoutError:
            print(f"no connection to {args.addr} within {CALL_TIMEOUT_S} s", file=sys.stderr)
            return 2
    return 0 if applied else 1


if __name__ == "__main__":
    sys.exit(main())
