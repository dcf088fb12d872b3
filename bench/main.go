// Command lmxbench runs lock workloads against lmx and the lock services it is
// measured against, and prints a table of cycles/s, acquire latency and
// fairness (Jain's index of the workers' cycle counts). One cycle is a lock
// then an unlock; for the echo baselines it is two round trips. Below the
// table it judges DESIGN.md's performance targets whose services ran, each a
// ratio of two rows of the same run. The services take turns, in rounds, so
// that the runs of each are spread over the whole run's time.
//
// Every service it starts listens on 127.0.0.1 or a Unix socket in a
// temporary directory and is stopped before it exits, also on error.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lmx-go/lmx/bench/internal/childsrv"
)

// brokerEnv, when set, makes this binary a child lmx broker listening on
// the URL it holds: the "lmx over a socket, broker in another process"
// services re-execute themselves this way.
const brokerEnv = "LMXBENCH_BROKER"

type config struct {
	services  []string
	workloads []string
	cycles    int // 0: each workload's default
	runs      int
	timeout   time.Duration // bound on one run of one workload
	smoke     bool
	out       string
	nodeDir   string      // where node_modules/live-mutex is
	broker    *leanBroker // the run's lmx broker binary
	etcd      *etcdServer // the run's etcd server, shared by the etcd services
}

func main() {
	if url := os.Getenv(brokerEnv); url != "" {
		os.Exit(childsrv.Broker("lmxbench broker", url, brokerMaxSessions()))
	}
	if url := os.Getenv(echoEnv); url != "" {
		os.Exit(runEchoServer(url))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lmxbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	services := fs.String("services", "", "comma-separated `services` (default: all; -smoke: "+strings.Join(smokeServices, ",")+"); known: "+strings.Join(serviceNames(), ","))
	workloads := fs.String("workloads", "", "comma-separated `workloads` (default: all): "+strings.Join(workloadNames(), ","))
	fs.IntVar(&cfg.cycles, "cycles", 0, "cycles per workload run (default: the workload's own)")
	fs.IntVar(&cfg.runs, "runs", 3, "rounds, each of which starts every service anew and runs each workload once; the table reports medians")
	fs.DurationVar(&cfg.timeout, "timeout", 60*time.Second, "bound on one run of one workload")
	fs.BoolVar(&cfg.smoke, "smoke", false, "tiny cycle counts, only services that start fast")
	fs.StringVar(&cfg.out, "o", "", "also write the table and the targets as markdown to `file`")
	fs.StringVar(&cfg.nodeDir, "node-dir", ".", "the `directory` holding node_modules/live-mutex")
	scaleN := fs.Int("scale", 0, "instead of the matrix, open `N` sessions to a broker child, report its RSS and check FIFO across them")
	soak := fs.Bool("soak", false, "instead of the matrix, soak a broker (-soak-cycles in-process, -soak-net-cycles over a Unix socket) and check its heap and goroutines end where they started")
	soakCycles := fs.Int("soak-cycles", 10_000_000, "in-process cycles of -soak")
	soakNetCycles := fs.Int("soak-net-cycles", 1_000_000, "cycles over a Unix socket of -soak")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg.broker = new(leanBroker)
	defer cfg.broker.remove()
	switch {
	case *scaleN != 0:
		if *scaleN < 2 {
			fmt.Fprintf(stderr, "lmxbench: -scale %d: at least 2 sessions, one to hold the key the others queue on\n", *scaleN)
			return 2
		}
		return runScale(ctx, cfg, *scaleN, stdout, stderr)
	case *soak:
		return runSoak(ctx, *soakCycles, *soakNetCycles, stdout, stderr)
	}
	cfg.services = splitList(*services)
	cfg.workloads = splitList(*workloads)
	if len(cfg.services) == 0 {
		if cfg.smoke {
			cfg.services = smokeServices
		} else {
			cfg.services = serviceNames()
		}
	}
	if len(cfg.workloads) == 0 {
		cfg.workloads = workloadNames()
	}
	if cfg.runs < 1 {
		cfg.runs = 1
	}
	for _, s := range cfg.services {
		if _, ok := serviceByName(s); !ok {
			fmt.Fprintf(stderr, "lmxbench: unknown service %q\n", s)
			return 2
		}
	}
	for _, w := range cfg.workloads {
		if _, ok := workloadByName(w); !ok {
			fmt.Fprintf(stderr, "lmxbench: unknown workload %q\n", w)
			return 2
		}
	}
	cfg.etcd = new(etcdServer)
	defer cfg.etcd.close()
	rows := runMatrix(ctx, cfg, stderr)
	table := renderTable(rows) + renderTargets(rows) + renderCost(rows)
	fmt.Fprint(stdout, table)
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(table), 0o644); err != nil {
			fmt.Fprintln(stderr, "lmxbench:", err)
			return 1
		}
	}
	return 0
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
