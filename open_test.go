package lmx_test

import (
	"context"
	"fmt"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOpen(t *testing.T) {
	ctx := context.Background()
	unixAddr, ub := listen(t, "unix")
	tcpAddr, tb := listen(t, "tcp")
	for _, c := range []struct {
		url    string
		broker *lmx.Broker // the broker the URL reaches, nil for mem
	}{
		{"mem://", nil},
		{unixAddr, ub},
		{tcpAddr, tb},
	} {
		l, err := lmx.Open(ctx, c.url)
		require.NoError(t, err, c.url)
		lease, err := l.Lock(ctx, "k")
		require.NoError(t, err, c.url)
		if c.broker != nil {
			ki, err := c.broker.Inspect(ctx, "k")
			require.NoError(t, err)
			require.Len(t, ki.Holders, 1, "%s reaches another broker", c.url)
			assert.Equal(t, lease.ID(), ki.Holders[0].ID)
		}
		require.NoError(t, lease.Unlock(ctx))
		require.NoError(t, l.Close())
	}

	_, err := lmx.Open(ctx, "redis://127.0.0.1:6379")
	assert.ErrorContains(t, err, `no driver for scheme "redis"`)
}

// registered counts the schemes TestRegister made, so that it can run more
// than once in a process.
var registered atomic.Int32

func TestRegister(t *testing.T) {
	scheme := fmt.Sprint("test-driver", registered.Add(1))
	var got string
	lmx.Register(scheme, func(_ context.Context, u *url.URL) (lmx.Locker, error) {
		got = u.Host + u.Path
		return lmx.NewBroker(), nil
	})
	l, err := lmx.Open(context.Background(), scheme+"://host/prefix")
	require.NoError(t, err)
	l.Close()
	assert.Equal(t, "host/prefix", got)
	assert.Contains(t, lmx.Schemes(), scheme)
	assert.Panics(t, func() { lmx.Register("mem", func(context.Context, *url.URL) (lmx.Locker, error) { return nil, nil }) })
}
