package lmx_test

import (
	"context"
	"runtime"
	"strings"
	"testing"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/require"
)

// writers counts the sessions' writer goroutines in this process.
func writers() int {
	buf := make([]byte, 1<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "lmx.(*conn).writer")
}

// An idle session keeps one goroutine, its reader: a grant pushed to it from
// outside its reader's batch (another session's Release, an in-process
// Unlock) starts a writer, which ends once it has written the grant.
func TestWriterEndsWhenIdle(t *testing.T) {
	ctx := context.Background()
	b := lmx.NewBroker()
	defer b.Close()
	path := socketPath(t)
	_, err := b.Listen("unix", path)
	require.NoError(t, err)
	c1, err := lmx.Dial(ctx, "unix://"+path)
	require.NoError(t, err)
	defer c1.Close()
	c2, err := lmx.Dial(ctx, "unix://"+path)
	require.NoError(t, err)
	defer c2.Close()

	held, err := c1.Lock(ctx, "net")
	require.NoError(t, err)
	local, err := b.Lock(ctx, "local")
	require.NoError(t, err)
	got := make(chan error, 2)
	for _, key := range []string{"net", "local"} {
		go func() {
			l, err := c2.Lock(ctx, key)
			if err == nil {
				err = l.Unlock(ctx)
			}
			got <- err
		}()
	}
	waitFor(t, func() bool {
		st, err := b.Stats(ctx)
		return err == nil && st.Waiters == 2
	})
	require.NoError(t, held.Unlock(ctx))  // pushed to c2 from c1's session
	require.NoError(t, local.Unlock(ctx)) // pushed to c2 from this goroutine
	require.NoError(t, <-got)
	require.NoError(t, <-got)
	waitFor(t, func() bool { return writers() == 0 })
}
