package lmx_test

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the run if a test left a goroutine of this module behind.
// Run with LMX_TEST_CHILD set, the test binary is instead a child process of
// a test (see runChild).
func TestMain(m *testing.M) {
	if mode := os.Getenv("LMX_TEST_CHILD"); mode != "" {
		os.Exit(runChild(mode, os.Getenv("LMX_TEST_ADDR")))
	}
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(); leaked != "" {
			fmt.Fprintf(os.Stderr, "leaked goroutines:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines returns the stacks of goroutines running this module's
// code once the tests are over, allowing them a few seconds to finish.
func leakedGoroutines() string {
	var leaked []string
	for range 50 {
		leaked = leaked[:0]
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for g := range strings.SplitSeq(string(buf), "\n\n") {
			if strings.Contains(g, "github.com/lmx-go/lmx") && !strings.Contains(g, "leakedGoroutines") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return ""
		}
		time.Sleep(100 * time.Millisecond)
	}
	return strings.Join(leaked, "\n\n")
}
