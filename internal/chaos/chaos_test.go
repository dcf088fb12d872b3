package chaos

import (
	"flag"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	duration = flag.Duration("chaos.duration", time.Minute, "how long TestChaos injects faults")
	seed     = flag.Uint64("chaos.seed", 1, "TestChaos's seed; 0 picks one at random")
)

// TestMain runs the binary as the harness's broker or worker when the
// harness starts it so.
func TestMain(m *testing.M) {
	if ran, code := Main(nil); ran {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// run runs the harness for d with seed and skip, and logs its summary.
func run(t *testing.T, d time.Duration, seed uint64, skip string) Summary {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	dir, err := os.MkdirTemp("", "chaos")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	s, err := Run(t.Context(), Config{Duration: d, Seed: seed, Skip: skip, Dir: dir, Exe: exe, Log: testLog{t}})
	require.NoError(t, err)
	t.Log(s)
	return s
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(string(p))
	return len(p), nil
}

// No double grant, no overlap on clean keys, tokens in order, Unlock's
// contract kept, and the broker back to idle and to its baseline, while
// workers are killed, connections cut and stalled, leases expire, are
// forced and preempted, and the broker is killed and restarted. Replay a
// run with -chaos.seed; make it longer with -chaos.duration.
func TestChaos(t *testing.T) {
	s := *seed
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("chaos: seed %d, %v of faults", s, *duration)
	sum := run(t, *duration, s, "")
	assert.False(t, sum.Failed(), "violations (replay with -chaos.seed=%d):\n%v", s, sum)
	assert.Positive(t, sum.Cycles)
	assert.Positive(t, sum.Kills+sum.Cuts+sum.Stalls+sum.Forces, "no fault was injected")
}

// The negative control: a worker that enters a clean key without locking
// it must make the checker report the overlap.
func TestChaosNegativeControl(t *testing.T) {
	sum := run(t, 3*time.Second, 7, "clean/a")
	assert.Positive(t, sum.Violations[CleanOverlap], "the checker missed a worker that skips the lock:\n%v", sum)
}

func TestCheckerRules(t *testing.T) {
	t.Run("overlap on a mutex counts once the earlier Unlock succeeds", func(t *testing.T) {
		c := NewChecker(Keys)
		a, _ := c.Enter("w1", "hot/a", 10, false)
		b, _ := c.Enter("w2", "hot/a", 11, false)
		_, _, v, _ := c.Counts()
		assert.Zero(t, v[DoubleGrant], "counted before the outcome")
		require.NoError(t, c.Exit(a))
		require.NoError(t, c.Unlocked(a, Released))
		require.NoError(t, c.Exit(b))
		require.NoError(t, c.Unlocked(b, Released))
		_, _, v, _ = c.Counts()
		assert.Equal(t, 1, v[DoubleGrant])
	})
	t.Run("a holder whose lease ended before it entered is no violation", func(t *testing.T) {
		c := NewChecker(Keys)
		a, _ := c.Enter("w1", "hot/a", 11, false)
		b, _ := c.Enter("w2", "hot/a", 10, false) // granted first, forced, entered late
		require.NoError(t, c.Unlocked(b, Forced))
		require.NoError(t, c.Unlocked(a, Released))
		_, _, v, _ := c.Counts()
		assert.Zero(t, v[DoubleGrant])
		assert.Zero(t, v[TokenOrder])
	})
	t.Run("an expired holder overlapped is no violation", func(t *testing.T) {
		c := NewChecker(Keys)
		a, _ := c.Enter("w1", "hot/a", 10, false)
		c.Enter("w2", "hot/a", 11, false)
		require.NoError(t, c.Unlocked(a, Expired))
		_, _, v, _ := c.Counts()
		assert.Zero(t, v[DoubleGrant])
	})
	t.Run("readers share, a writer does not", func(t *testing.T) {
		c := NewChecker(Keys)
		r1, _ := c.Enter("w1", "rw", 10, true)
		r2, _ := c.Enter("w2", "rw", 11, true)
		w, _ := c.Enter("w3", "rw", 12, false)
		require.NoError(t, c.Unlocked(r1, Released))
		require.NoError(t, c.Unlocked(r2, Released))
		_, _, v, _ := c.Counts()
		assert.Zero(t, v[DoubleGrant], "counted before the writer's outcome")
		require.NoError(t, c.Unlocked(w, Released))
		_, _, v, _ = c.Counts()
		assert.Equal(t, 1, v[DoubleGrant], "the writer beside readers")
	})
	t.Run("a semaphore counts past its limit only", func(t *testing.T) {
		c := NewChecker(Keys)
		a, _ := c.Enter("w1", "sem", 10, false)
		b, _ := c.Enter("w2", "sem", 11, false)
		d, _ := c.Enter("w3", "sem", 12, false)
		require.NoError(t, c.Unlocked(d, Released))
		require.NoError(t, c.Unlocked(a, Released))
		_, _, v, _ := c.Counts()
		assert.Zero(t, v[OverLimit], "one of two confirmed")
		require.NoError(t, c.Unlocked(b, Released))
		_, _, v, _ = c.Counts()
		assert.Equal(t, 1, v[OverLimit])
	})
	t.Run("on a clean key only a restart excuses", func(t *testing.T) {
		c := NewChecker(Keys)
		a, _ := c.Enter("w1", "clean/a", 10, false)
		b, _ := c.Enter("w2", "clean/a", 11, false)
		require.NoError(t, c.Unlocked(a, Lost))
		require.NoError(t, c.Unlocked(b, Released))
		_, _, v, _ := c.Counts()
		assert.Equal(t, 1, v[CleanOverlap], "a loss without a restart")
		c = NewChecker(Keys)
		a, _ = c.Enter("w1", "clean/a", 10, false)
		c.BrokerRestarted()
		b, _ = c.Enter("w2", "clean/a", 11, false)
		require.NoError(t, c.Unlocked(a, Lost))
		require.NoError(t, c.Unlocked(b, Released))
		_, _, v, _ = c.Counts()
		assert.Zero(t, v[CleanOverlap])
	})
	t.Run("tokens rise past confirmed releases", func(t *testing.T) {
		c := NewChecker(Keys)
		a, _ := c.Enter("w1", "hot/b", 10, false)
		require.NoError(t, c.Exit(a))
		require.NoError(t, c.Unlocked(a, Released))
		b, _ := c.Enter("w2", "hot/b", 9, false)
		require.NoError(t, c.Unlocked(b, Released))
		_, _, v, _ := c.Counts()
		assert.Equal(t, 1, v[TokenOrder])
	})
	t.Run("an Unlock that returned nil with the lease not ErrReleased", func(t *testing.T) {
		c := NewChecker(Keys)
		a, _ := c.Enter("w1", "hot/c", 10, false)
		require.NoError(t, c.Unlocked(a, BadRelease))
		_, _, v, _ := c.Counts()
		assert.Equal(t, 1, v[UnlockErr])
	})
	t.Run("a killed worker's holders never count", func(t *testing.T) {
		c := NewChecker(Keys)
		c.Enter("w1", "hot/a", 10, false)
		c.WorkerKilled("w1")
		b, _ := c.Enter("w2", "hot/a", 11, false)
		require.NoError(t, c.Unlocked(b, Released))
		_, _, v, _ := c.Counts()
		assert.Zero(t, v[DoubleGrant])
	})
}
