package main

import (
	"bytes"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/lmx-go/lmx/bench/internal/childsrv"
)

// TestMain lets the test binary be the child broker and echo server that
// the lmx-unix and echo services re-execute.
func TestMain(m *testing.M) {
	if url := os.Getenv(brokerEnv); url != "" {
		os.Exit(childsrv.Broker("lmxbench broker", url, brokerMaxSessions()))
	}
	if url := os.Getenv(echoEnv); url != "" {
		os.Exit(runEchoServer(url))
	}
	os.Exit(m.Run())
}

// tableRows returns the table's rows as service/workload -> status.
func tableRows(t *testing.T, out string) map[string]string {
	t.Helper()
	table, _, _ := strings.Cut(out, "\n\n") // the targets follow
	rows := make(map[string]string)
	for _, line := range strings.Split(strings.TrimSpace(table), "\n")[2:] {
		f := strings.Split(strings.Trim(line, "|"), "|")
		if len(f) != 11 {
			t.Fatalf("row %q has %d cells", line, len(f))
		}
		rows[strings.TrimSpace(f[0])+"/"+strings.TrimSpace(f[1])] = strings.TrimSpace(f[10])
	}
	return rows
}

func TestSmoke(t *testing.T) {
	out := filepath.Join(t.TempDir(), "table.md")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-smoke", "-runs", "2", "-o", out}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	md, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if string(md) != stdout.String() {
		t.Errorf("-o file differs from stdout:\n%s\n%s", md, stdout.String())
	}
	rows := tableRows(t, string(md))
	want := map[string]bool{}
	for _, s := range []string{"lmx-inproc", "lmx-unix", "echo-unix", "echo-pipelined-unix"} {
		for _, w := range []string{"hot1", "hot20", "keys20", "keys200"} {
			want[s+"/"+w] = true
			if st, ok := rows[s+"/"+w]; !ok {
				t.Errorf("no row %s/%s", s, w)
			} else if st != "ok" {
				t.Errorf("row %s/%s: %s", s, w, st)
			}
		}
	}
	if len(rows) != len(want) {
		t.Errorf("%d rows, want %d:\n%s", len(rows), len(want), md)
	}
	if !strings.Contains(string(md), "MiB after") {
		t.Errorf("no broker RSS in:\n%s", md)
	}
	for _, want := range []string{"| hot1 ≥ 0.8x raw echo (Unix socket) | lmx-unix ", "| broker RSS ≤ 20 MiB after 250000 cycles | ", "not judged"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("no %q in the targets:\n%s", want, md)
		}
	}
	// Each round starts every service anew.
	for _, want := range []string{"round 1: starting lmx-unix", "round 2: starting lmx-unix", "round 2: starting echo-pipelined-unix"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("no %q in the log:\n%s", want, stderr.String())
		}
	}
	if !regexp.MustCompile(`raw echo \(Unix socket\) \| .* \(rounds: [0-9.]+x [0-9.]+x\) \|`).Match(md) {
		t.Errorf("the hot1 target does not show its two rounds:\n%s", md)
	}
}

// The targets are judged from the rows of one run: a ratio of two services'
// medians, shown beside each round's ratio, a fairness, the broker's RSS
// once it has served enough cycles. One whose services did not both run is
// left out.
func TestTargets(t *testing.T) {
	r := func(service, workload string, perSec, fairness float64) row {
		res := result{perSec: perSec, fairness: fairness}
		return row{service: service, workload: workload, status: "ok", all: []result{res}, res: res}
	}
	rows := []row{
		r("lmx-unix", "hot20", 50000, 0.995),
		r("live-mutex", "hot20", 9000, 1),
		r("redis-redislock", "hot20", 11000, 0.98),
		r("lmx-unix", "hot1", 15000, 1),
		r("echo-unix", "hot1", 20000, 1),
		r("echo-tcp", "hot1", 10000, 1),
		r("lmx-unix-clients", "hot20", 20000, 1),
		{service: "lmx-tcp", workload: "hot1", status: "error: refused"},
	}
	rows[0].rssMiB, rows[0].served = 12.5, 300000
	rows[3].all = []result{{perSec: 14000}, {perSec: 15000}, {perSec: 16000}}
	rows[4].all = []result{{perSec: 20000}, {perSec: 20000}, {perSec: 20000}}
	got := renderTargets(rows)
	for _, want := range []string{
		"| hot20 ≥ 5x live-mutex | lmx-unix 50000 vs live-mutex 9000 = 5.56x | met |",
		"| hot20 ≥ 5x Redis+redislock | lmx-unix 50000 vs redis-redislock 11000 = 4.55x | not met |",
		"| hot20 fairness ≥ 0.99 | lmx-unix 0.995 | met |",
		"| hot1 ≥ 0.8x raw echo (Unix socket) | lmx-unix 15000 vs echo-unix 20000 = 0.75x (rounds: 0.70x 0.75x 0.80x) | not met |",
		"| broker RSS ≤ 20 MiB after 250000 cycles | 12.5 MiB after 300000 cycles | met |",
		"| hot key between Clients ≤ 1.3 round trips a hand-off | lmx-unix-clients hot20 20000 vs echo-unix hot1 20000 (2 round trips a cycle) = 2.00 round trips | not met |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in:\n%s", want, got)
		}
	}
	for _, absent := range []string{"TCP", "keys200"} {
		if strings.Contains(got, absent) {
			t.Errorf("a target without its rows (%s) in:\n%s", absent, got)
		}
	}
	if got := renderTargets(rows[3:4]); got != "" {
		t.Errorf("targets from a run without references:\n%s", got)
	}
}

// An unavailable service has its rows, saying so.
func TestUnavailable(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	var stdout bytes.Buffer
	code := run([]string{"-services", "redis-redislock,live-mutex", "-workloads", "hot1,hot20", "-runs", "1"}, &stdout, io.Discard)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	rows := tableRows(t, stdout.String())
	for _, k := range []string{"redis-redislock/hot1", "redis-redislock/hot20", "live-mutex/hot1", "live-mutex/hot20"} {
		if !strings.HasPrefix(rows[k], "unavailable") {
			t.Errorf("%s: %q, want unavailable", k, rows[k])
		}
	}
}

func TestUnknownService(t *testing.T) {
	if code := run([]string{"-services", "nope"}, io.Discard, io.Discard); code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	if code := run([]string{"-scale", "1"}, io.Discard, io.Discard); code != 2 {
		t.Errorf("-scale 1: exit %d, want 2", code)
	}
}

func TestJain(t *testing.T) {
	for _, c := range []struct {
		counts []int64
		want   float64
	}{
		{[]int64{5, 5, 5, 5}, 1},
		{[]int64{10, 0, 0, 0}, 0.25},
		{[]int64{0, 0}, 0},
	} {
		if got := jain(c.counts); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("jain(%v) = %v, want %v", c.counts, got, c.want)
		}
	}
}

func TestCycles(t *testing.T) {
	wl, _ := workloadByName("hot20")
	inproc, _ := serviceByName("lmx-inproc")
	etcd, _ := serviceByName("etcd")
	for _, c := range []struct {
		name string
		cfg  config
		svc  service
		want int
	}{
		{"default", config{}, service{}, wl.cycles},
		{"scaled", config{}, inproc, wl.cycles * inprocScale},
		{"smoke is not scaled", config{smoke: true}, inproc, wl.smoke},
		{"-cycles is not scaled", config{cycles: 7}, inproc, 7},
		{"capped", config{}, etcd, etcdMaxCycles},
	} {
		if got := cycles(c.cfg, c.svc, wl); got != c.want {
			t.Errorf("%s: %d cycles, want %d", c.name, got, c.want)
		}
	}
}

// The scale mode opens its sessions to a broker child with the session
// limit raised past the default's few, reads the broker's RSS, and finds
// every waiter granted in queue order.
func TestScale(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-scale", "60"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`scale: 60 sessions open \(Stats.Sessions 61\)`),
		regexp.MustCompile(`broker RSS: [0-9.]+ MiB with 1 session, [0-9.]+ MiB with 60: -?[0-9.]+ KiB a session`),
		regexp.MustCompile(`FIFO: 59 waiters, one a session, granted in queue order`),
	} {
		if !want.MatchString(stdout.String()) {
			t.Errorf("no %q in:\n%s", want, stdout.String())
		}
	}
}

// A short soak ends with the heap and goroutines it started with.
func TestSoak(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-soak", "-soak-cycles", "20000", "-soak-net-cycles", "2000"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s%s", code, stdout.String(), stderr.String())
	}
	for _, want := range []string{"soak in-process: 20000 cycles", "soak Unix socket: 2000 cycles"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("no %q in:\n%s", want, stdout.String())
		}
	}
}
