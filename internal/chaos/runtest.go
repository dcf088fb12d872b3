package chaos

import (
	"flag"
	"os"
	"testing"
	"time"
)

// The flags of a test binary that runs the harness with RunTest.
var (
	durationFlag = flag.Duration("chaos.duration", 0, "how long the chaos test injects faults; 0 for the test's own default")
	seedFlag     = flag.Uint64("chaos.seed", 1, "the chaos test's seed; 0 picks one at random")
)

// RunTest runs the harness for a test, the workers locking through srv (nil
// for lmx's own broker): for the -chaos.duration flag's time (def when the
// flag is 0), with the -chaos.seed flag's seed (one at random when it is
// 0). It logs the seed first and the summary last, and fails t when the
// harness fails, when the run found a violation (naming the seed that
// replays it), when it counted no cycle or injected no fault, or when its
// preemptor ran and preempted nothing. The test binary's TestMain must call
// Main first.
func RunTest(t *testing.T, srv *Server, def time.Duration) Summary {
	t.Helper()
	d, seed := *durationFlag, *seedFlag
	if d == 0 {
		d = def
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("chaos: seed %d, %v of faults", seed, d)
	sum := runTest(t, Config{Duration: d, Seed: seed, Server: srv})
	if sum.Failed() {
		t.Errorf("violations (replay with -chaos.seed=%d):\n%v", seed, sum)
	}
	if sum.Cycles == 0 {
		t.Error("no hold's Unlock was reported")
	}
	if sum.Kills+sum.Cuts+sum.Stalls+sum.Forces == 0 {
		t.Error("no fault was injected")
	}
	if sum.Preemptor && sum.Outcomes[Preempted] == 0 {
		t.Error("the preemptor ran, yet no lease was preempted")
	}
	return sum
}

// runTest runs the harness as cfg says, from this test binary and with its
// sockets in a temporary folder, logging its progress and summary to t.
func runTest(t *testing.T, cfg Config) Summary {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "chaos") // not t.TempDir: sockets want a short path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg.Dir, cfg.Exe, cfg.Log = dir, exe, testLog{t}
	sum, err := Run(t.Context(), cfg)
	if err != nil {
		t.Fatalf("the harness failed: %v", err)
	}
	t.Log(sum)
	return sum
}

// testLog writes the harness's progress to a test's log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(string(p))
	return len(p), nil
}
