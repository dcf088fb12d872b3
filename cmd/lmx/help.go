package main

import "context"

// commands are lmx's subcommands, in the order of the help, with their
// help texts.
var commands = []*command{
	{
		name: "start", args: "[FLAGS]", summary: "run a broker until SIGINT or SIGTERM",
		run: cmdStart,
		help: `Runs a broker, listening at each --listen URL, until SIGINT or SIGTERM;
then it shuts down gracefully: it stops accepting, answers queued requests,
ends the sessions (releasing their leases) and exits 0. A second signal, or
--shutdown-timeout running out, closes it at once and exits 1.

Without --listen, it listens at the default socket, $XDG_RUNTIME_DIR/lmx.sock
(/tmp/lmx-$UID.sock when XDG_RUNTIME_DIR is unset), and at
tcp://127.0.0.1:6971: where clients look when not told. (6970 is live-mutex's
port: --listen livemutex+tcp://127.0.0.1:6970 serves its clients there.)

It logs to stderr; its first line at level INFO, "lmx broker ready", lists
the URLs it listens at (with the ports chosen for :0) and the metrics URL.
With --tls-cert and --tls-key, TCP is served with TLS (Unix sockets never);
add --tls-client-ca for mutual TLS.

--metrics serves, over plain HTTP, a health check at /healthz (200 while the
broker serves) and Prometheus metrics at /metrics: the gauges lmx_keys,
lmx_holders, lmx_waiters and lmx_sessions; the counters lmx_grants_total,
lmx_expiries_total, lmx_forced_total, lmx_preemptions_total and
lmx_session_lost_total; the histograms lmx_wait_seconds (how long granted
requests waited) and lmx_hold_seconds (how long ended leases were held), in
buckets from 1ms to 4h; and go_build_info, the Go runtime's go_* and the
process's process_*. 'lmx healthcheck' asks /healthz, for a container.

Every flag can also be set by its environment variable, shown below:
LMX_BROKER_ and the flag's name, never a client's LMX_ variable. A flag on the
command line wins.
`,
	},
	{
		name: "acquire", args: "KEY [FLAGS]", summary: "take a lock that outlives the command; print its id and token",
		run: cmdAcquire,
		help: `Takes the lock KEY and prints its lock id and fencing token. The lock stays
held after acquire exits, until its TTL runs out (--ttl, 30s by default) or
someone releases it with 'lmx release KEY ID'.

Without --wait, acquire fails at once with exit code 3 if the key is held;
with --wait D it waits up to D and then fails with exit code 4, and with
--wait forever it waits until it gets the lock or is interrupted (exit code
130 for SIGINT). --conflict-exit-code N exits N instead of 3 or 4.

  id=$(lmx acquire -q deploy --ttl 10m) || exit
  ...
  lmx extend deploy "$id" --ttl 10m    # renew it, from any process
  lmx release deploy "$id"
`,
	},
	{
		name: "extend", args: "KEY ID [FLAGS]", summary: "renew a lease by its id, from anywhere",
		run: cmdExtend,
		help: `Sets the lease of KEY whose lock id is ID to expire --ttl from now (30s by
default), wherever it was taken, and prints the new expiry. A wrong or
stale id changes nothing and is an error (exit code 1).
`,
	},
	{
		name: "release", args: "KEY ID | KEY --force", summary: "release a lock by its id, or every lease of a key",
		run: cmdRelease,
		help: `Releases the lease of KEY whose lock id is ID, wherever it was taken. A
wrong or stale id changes nothing and is an error (exit code 1).

With --force, ends every lease of KEY, whoever holds it: their holders see
them lost (a running 'lmx run' kills its command and exits 6), and the key
passes to its waiters.
`,
	},
	{
		name: "run", args: "KEY [FLAGS] -- CMD [ARGS...]", summary: "hold a lock while a command runs (flock(1) across machines)",
		run: cmdRun,
		help: `Waits for the lock KEY, runs CMD with it held, releases it when CMD exits,
and exits with CMD's exit status. Two 'lmx run' of one key, on any machines
that reach the broker, never run their commands at once.

The lease lives as long as lmx run's session with the broker: if lmx run
dies, the broker releases it when the session times out. --ttl D bounds it
further; with --keepalive the broker renews it when half of D is left, for as
long as the command runs (up to ten years). If the lease is lost while CMD runs (its TTL
ran out, the broker went away, 'lmx release --force'), lmx run kills CMD and
every process in its process group (SIGKILL) at once and exits 6.

CMD runs in a process group of its own; at a terminal, that group has the
terminal's foreground while CMD runs, so that CMD can read it and Ctrl-C
reaches it. SIGINT and SIGTERM received by lmx run are passed to that group,
and the lock is released once CMD exits. A
signal that comes while lmx run still waits for the lock ends it with 128
plus the signal's number (130 for SIGINT), as a shell would. CMD's
environment has LMX_LOCK_KEY, LMX_LOCK_ID and LMX_LOCK_TOKEN, the fencing
token.

Since CMD's own exit status passes through, a CMD exiting with 3 or 4 could
be taken for a lock not taken: --conflict-exit-code N (as flock -E) makes
lmx run exit N instead when the lock is held (--try) or the wait runs out.
`,
	},
	{
		name: "ls", args: "[PREFIX] [FLAGS]", summary: "list the keys held or awaited",
		run: cmdLs,
		help: `Lists the keys that start with PREFIX and have a holder or a waiter, sorted,
with their holders, waiters and limit.
`,
	},
	{
		name: "inspect", args: "KEY [FLAGS]", summary: "show a key's holders and waiters",
		run: cmdInspect,
		help: `Shows KEY's holders (lock id, token, owner, mode, since, expiry), in grant
order, and its waiters, in the order they will be granted.
`,
	},
	{
		name: "watch", args: "[PREFIX] [FLAGS]", summary: "print lock events as they happen",
		run: cmdWatch,
		help: `Prints one line per event of the keys that start with PREFIX (every key
without one): acquired, released, expired, preempted, forced, session-lost,
closed, and lagged when events were dropped because the output fell behind.
It runs until interrupted (exit 0), or until the connection to the broker is
lost (exit 5).
`,
	},
	{
		name: "ping", args: "[FLAGS]", summary: "connect to the broker and time a round trip",
		run: cmdPing,
		help: `Connects to the broker and makes a round trip, and prints the address that
answered and how long each took.
`,
	},
	{
		name: "stats", args: "[FLAGS]", summary: "show the broker's counts",
		run: cmdStats,
		help: `Shows what the broker holds now (keys, holders, waiters, sessions), what it
has done since it started (grants, expiries, forced, preemptions, leases
lost with their session), and wait- and hold-time histograms.
`,
	},
	{
		name: "healthcheck", args: "[FLAGS]", summary: "ask a broker's /healthz, for a container's HEALTHCHECK",
		run: cmdHealthcheck,
		help: `Asks the /healthz that 'lmx start --metrics HOST:PORT' serves, and exits 0
if the broker serves, else 1, as Docker's HEALTHCHECK expects. It reads
$LMX_BROKER_METRICS, as start does, so that in a container configured by
that variable it needs no flag.
`,
	},
	{
		name: "version", args: "[FLAGS]", summary: "say which release of lmx this is",
		run: cmdVersion,
		help: `Prints the version of lmx and of the library it is built with, the Go
release that built it and, built from a checkout, the commit: all from the
build info the Go toolchain records in the binary.
`,
	},
	{
		name: "demo", args: "", summary: "show the broker at work, in-process and over a Unix socket",
		run: cmdDemo,
		help: `Shows the broker at work: FIFO hand-off, a semaphore, a TTL expiring, a
fence refusing a stale holder, and a client on a Unix socket sharing the
table.
`,
	},
}

func cmdDemo(c *cli, cmd *command, args []string) error {
	f := c.newFlags(cmd)
	if _, err := f.parseArgs(args, 0); err != nil {
		return err
	}
	return demo(context.Background(), c.stdout)
}
