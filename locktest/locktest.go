// Package locktest is the conformance suite for lmx.Locker implementations:
// every door to a lock table (the in-process broker, the network client, the
// backends) runs the same tests, so they keep one contract.
//
// A door that also implements lmx.Admin gets the tests of Release, Inspect,
// ForceUnlock and Stats, and the tests that watch a queue form; a door
// without it skips those, each with its reason.
package locktest

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
)

// Factory returns a new, empty lock table door and arranges, with t.Cleanup,
// for it to be closed. In the default mode it is called inside a
// testing/synctest bubble, and everything it starts must belong to it.
type Factory func(t testing.TB) lmx.Locker

// An Option changes how Run runs the suite.
type Option func(*config)

type config struct {
	realTime bool
	unit     time.Duration
	skip     map[string]string
}

// Skip skips the tests named (as in Run's subtests: "Reentrant", ...) with
// reason, for a door that documents that it does not offer what they test.
func Skip(reason string, names ...string) Option {
	return func(c *config) {
		if c.skip == nil {
			c.skip = map[string]string{}
		}
		for _, n := range names {
			c.skip[n] = reason
		}
	}
}

// RealTime runs every test on the real clock instead of inside a
// testing/synctest bubble, for doors whose I/O a bubble cannot hold (a real
// socket). Time-dependent tests then use TTLs of a few multiples of unit and
// generous bounds; unit <= 0 means 25ms.
func RealTime(unit time.Duration) Option {
	return func(c *config) {
		c.realTime = true
		if unit > 0 {
			c.unit = unit
		}
	}
}

// Run runs the suite against the doors newLocker makes, one per test.
func Run(t *testing.T, newLocker Factory, opts ...Option) {
	c := config{unit: 25 * time.Millisecond}
	for _, o := range opts {
		o(&c)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if reason, ok := c.skip[tc.name]; ok {
				t.Skip(reason)
			}
			if c.realTime {
				tc.f(newEnv(t, newLocker(t), c.unit, false))
				return
			}
			// Inside a bubble time is fake: a unit of a second costs nothing
			// and leaves no room for scheduling noise.
			synctest.Test(t, func(t *testing.T) {
				tc.f(newEnv(t, newLocker(t), time.Second, true))
			})
		})
	}
}

var tests = []struct {
	name string
	f    func(*env)
}{
	{"LockUnlock", testLockUnlock},
	{"TryLock", testTryLock},
	{"MutualExclusion", testMutualExclusion},
	{"FIFO", testFIFO},
	{"NoBarging", testNoBarging},
	{"Cancel", testCancel},
	{"CancelBefore", testCancelBefore},
	{"CancelRace", testCancelRace},
	{"UnlockCancelledContext", testUnlockCancelledContext},
	{"ReleaseByID", testReleaseByID},
	{"StaleUnlock", testStaleUnlock},
	{"Tokens", testTokens},
	{"TTLExpiry", testTTLExpiry},
	{"TTLExtend", testTTLExtend},
	{"KeepAlive", testKeepAlive},
	{"Semaphore", testSemaphore},
	{"Shared", testShared},
	{"Priority", testPriority},
	{"Reentrant", testReentrant},
	{"ForceUnlock", testForceUnlock},
	{"Inspect", testInspect},
	{"InvalidInput", testInvalidInput},
	{"IdleKeysFreed", testIdleKeysFreed},
	{"PreemptReleasedInGrace", testPreemptReleasedInGrace},
	{"PreemptForced", testPreemptForced},
	{"PreemptRefused", testPreemptRefused},
	{"PriorityStarvationBound", testStarvationBound},
	{"LockDelay", testLockDelay},
	{"LockAll", testLockAll},
	{"LockAllWaits", testLockAllWaits},
	{"LockAllPartLost", testLockAllPartLost},
	{"LockAllRandom", testLockAllRandom},
	{"List", testList},
	{"StatsHistograms", testStatsHistograms},
	{"Watch", testWatch},
	{"WatchLagged", testWatchLagged},
	{"Close", testClose},
}
