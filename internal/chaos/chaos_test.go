package chaos

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMain runs the binary as the harness's broker or worker when the
// harness starts it so.
func TestMain(m *testing.M) {
	if ran, code := Main(nil); ran {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// No double grant, no overlap on clean keys, tokens in order, Unlock's
// contract kept, and the broker back to idle and to its baseline, while
// workers are killed, connections cut and stalled, leases expire, are
// forced and preempted, and the broker is killed and restarted. Replay a
// run with -chaos.seed; make it longer with -chaos.duration (a minute by
// default).
func TestChaos(t *testing.T) {
	RunTest(t, nil, time.Minute)
}

// The negative control: a worker that enters a clean key without locking
// it must make the checker report the overlap.
func TestChaosNegativeControl(t *testing.T) {
	sum := runTest(t, Config{Duration: 3 * time.Second, Seed: 7, Skip: "clean/a"})
	assert.Positive(t, sum.Violations[CleanOverlap], "the checker missed a worker that skips the lock:\n%v", sum)
}

// The starvation control: a clean worker stopped past the session timeout
// loses its session while it holds or is granted a clean key, and the
// key's next holder enters beside it. Its own stall watch tells the
// checker, which must count that hold apart, as lost to starvation, not as
// a clean-overlap.
func TestChaosStarvationControl(t *testing.T) {
	sum := runTest(t, Config{Duration: 6 * time.Second, Seed: 7, Freeze: "clean-handoff"})
	assert.Zero(t, sum.Violations[CleanOverlap], "a stopped worker's lost session counted as a clean-overlap:\n%v", sum)
	assert.Positive(t, sum.Starved, "no clean hold lost to the stops was counted:\n%v", sum)
}

// The checker's rules, each case a script of reports as workers send them
// ("#n" stands for the holder id the n-th Enter got; "stall w d" is a
// stall of d that w reports as it ends; "restart" and "kill w" are the
// harness's; "sleep d" lets d pass), the violations it must count and the
// holds of clean keys it must excuse as starved. The session timeout is
// 500ms.
func TestCheckerRules(t *testing.T) {
	for _, tc := range checkerCases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := NewChecker(Keys, 500*time.Millisecond)
				runScript(t, c, tc.script)
				c.Settle()
				_, _, got, _ := c.Counts()
				for _, k := range Kinds {
					assert.Equal(t, tc.want[k], got[k], k)
				}
				assert.Equal(t, tc.starved, c.Starved(), "clean holds excused as starved")
			})
		})
	}
}

// runScript sends c the reports of script (see TestCheckerRules).
func runScript(t *testing.T, c *Checker, script []string) {
	t.Helper()
	var ids []string
	for _, line := range script {
		f := strings.Fields(line)
		switch f[0] {
		case "restart":
			c.BrokerRestarted()
			continue
		case "kill":
			c.WorkerKilled(f[1])
			continue
		case "sleep":
			d, err := time.ParseDuration(f[1])
			require.NoError(t, err)
			time.Sleep(d)
			continue
		case "stall":
			d, err := time.ParseDuration(f[2])
			require.NoError(t, err)
			f = []string{"S", f[1], strconv.FormatInt(time.Now().UnixNano(), 10), strconv.FormatInt(int64(d), 10)}
		}
		for i, w := range f {
			if n, ok := strings.CutPrefix(w, "#"); ok {
				k, _ := strconv.Atoi(n)
				f[i] = ids[k-1]
			}
		}
		a := answer(c, f)
		require.False(t, strings.HasPrefix(a, "!"), "%s: %s", line, a)
		if f[0] == "E" {
			ids = append(ids, a)
		}
	}
}

// checkerCases are TestCheckerRules's scripts.
var checkerCases = []struct {
	name    string
	script  []string
	want    map[string]int
	starved int
}{
	{"a mutex overlapped by confirmed holders", []string{
		"E w1 hot/a 10 0", "E w2 hot/a 11 0", "X #1", "U #1 released", "X #2", "U #2 released",
	}, map[string]int{DoubleGrant: 1}, 0},
	{"an expired holder overlapped", []string{
		"E w1 hot/a 10 0", "E w2 hot/a 11 0", "U #1 expired", "U #2 released",
	}, nil, 0},
	{"a holder whose lease was forced before it entered", []string{
		"E w1 hot/a 11 0", "E w2 hot/a 10 0", "U #2 forced", "U #1 released",
	}, nil, 0},
	{"readers together", []string{
		"E w1 rw 10 1", "E w2 rw 11 1", "U #1 released", "U #2 released",
	}, nil, 0},
	{"a writer beside readers", []string{
		"E w1 rw 10 1", "E w2 rw 11 1", "E w3 rw 12 0", "U #1 released", "U #2 released", "U #3 released",
	}, map[string]int{DoubleGrant: 1}, 0},
	{"a semaphore at its limit", []string{
		"E w1 sem 10 0", "E w2 sem 11 0", "U #1 released", "U #2 released",
	}, nil, 0},
	{"a semaphore past its limit, one of those inside confirmed", []string{
		"E w1 sem 10 0", "E w2 sem 11 0", "E w3 sem 12 0", "U #3 released", "U #1 released", "U #2 lost",
	}, nil, 0},
	{"a semaphore past its limit", []string{
		"E w1 sem 10 0", "E w2 sem 11 0", "E w3 sem 12 0", "U #3 released", "U #1 released", "U #2 released",
	}, map[string]int{OverLimit: 1}, 0},
	{"a clean key's holder lost without a restart", []string{
		"E w1 clean/a 10 0", "E w2 clean/a 11 0", "U #1 lost", "U #2 released",
	}, map[string]int{CleanOverlap: 1}, 0},
	{"a clean key's holder lost across a restart", []string{
		"E w1 clean/a 10 0", "restart", "E w2 clean/a 11 0", "U #1 lost", "U #2 released",
	}, nil, 0},
	{"a clean key's holder lost while its worker stalled", []string{
		"E w1 clean/a 10 0", "sleep 400ms", "stall w1 400ms", "E w2 clean/a 11 0", "U #1 lost", "U #2 released",
	}, nil, 1},
	{"a clean key's holder lost while its worker stalled, overlapped twice", []string{
		"E w1 clean/a 10 0", "sleep 400ms", "stall w1 400ms", "E w2 clean/a 11 0", "U #2 released", "E w3 clean/a 12 0", "U #3 released", "U #1 lost",
	}, nil, 1},
	{"a clean key's holder lost while the broker stalled, reported after", []string{
		"E w1 clean/a 10 0", "sleep 400ms", "E w2 clean/a 11 0", "U #1 lost", "U #2 released", "stall broker 400ms",
	}, nil, 1},
	{"a clean key's holder lost while its worker and the broker stalled by turns", []string{
		"E w1 clean/a 10 0", "sleep 150ms", "stall w1 150ms", "sleep 150ms", "stall broker 150ms", "E w2 clean/a 11 0", "U #1 lost", "U #2 released",
	}, nil, 1},
	{"a clean key's holder lost while its worker and the broker stalled at once", []string{
		"E w1 clean/a 10 0", "sleep 200ms", "stall w1 200ms", "stall broker 200ms", "E w2 clean/a 11 0", "U #1 lost", "U #2 released",
	}, map[string]int{CleanOverlap: 1}, 0},
	{"a clean key's holder lost while another worker stalled", []string{
		"E w1 clean/a 10 0", "sleep 400ms", "stall w3 400ms", "E w2 clean/a 11 0", "U #1 lost", "U #2 released",
	}, map[string]int{CleanOverlap: 1}, 0},
	{"a clean key's holder lost long after its worker stalled", []string{
		"stall w1 400ms", "sleep 1s", "E w1 clean/a 10 0", "E w2 clean/a 11 0", "U #1 lost", "U #2 released",
	}, map[string]int{CleanOverlap: 1}, 0},
	{"a clean key's semaphore past its limit, a starved holder among them", []string{
		"E w1 clean/sem 10 0", "E w2 clean/sem 11 0", "E w3 clean/sem 12 0", "sleep 400ms", "stall w2 400ms",
		"E w4 clean/sem 13 0", "U #1 released", "U #2 lost", "U #3 released", "U #4 released",
	}, nil, 1},
	{"a clean key's semaphore past its limit, stalls or not", []string{
		"E w1 clean/sem 10 0", "E w2 clean/sem 11 0", "E w3 clean/sem 12 0", "E w5 clean/sem 14 0", "sleep 400ms", "stall w2 400ms",
		"E w4 clean/sem 13 0", "U #1 released", "U #2 lost", "U #3 released", "U #4 released", "U #5 released",
	}, map[string]int{CleanOverlap: 1}, 1},
	{"two confirmed holders of a clean key while both stalled", []string{
		"E w1 clean/a 10 0", "sleep 400ms", "stall w1 400ms", "stall broker 400ms", "E w2 clean/a 11 0", "U #1 released", "U #2 released",
	}, map[string]int{CleanOverlap: 1}, 0},
	{"a token not above one released before", []string{
		"E w1 hot/b 10 0", "X #1", "U #1 released", "E w2 hot/b 9 0", "U #2 released",
	}, map[string]int{TokenOrder: 1}, 0},
	{"an Unlock that returned nil with the lease not ErrReleased", []string{
		"E w1 hot/c 10 0", "U #1 badrelease",
	}, map[string]int{UnlockErr: 1}, 0},
	{"a killed worker's holder overlapped", []string{
		"E w1 hot/a 10 0", "kill w1", "E w2 hot/a 11 0", "U #2 released",
	}, nil, 0},
}
