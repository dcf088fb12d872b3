package lmx_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// logRecord is a line of a JSON slog handler's output.
type logRecord struct {
	Level    string `json:"level"`
	Msg      string `json:"msg"`
	Sessions int    `json:"sessions"`
	Released int    `json:"leases_released"`
}

func logRecords(t *testing.T, logs *syncBuffer) []logRecord {
	t.Helper()
	var recs []logRecord
	for line := range strings.Lines(logs.String()) {
		var r logRecord
		require.NoError(t, json.Unmarshal([]byte(line), &r), line)
		recs = append(recs, r)
	}
	return recs
}

// pipeTo dials b over net.Pipe, which a synctest bubble can hold.
func pipeTo(t *testing.T, b *lmx.Broker) *lmx.Client {
	t.Helper()
	c, err := lmx.Dial(context.Background(), "pipe:0", lmx.WithDialer(func(context.Context, string, string) (net.Conn, error) {
		c1, c2 := net.Pipe()
		b.ServeConn(c2)
		return c1, nil
	}))
	require.NoError(t, err)
	return c
}

// TestMassDisconnectSummarized: when 500 clients holding a lock each close
// at once, the service's log gets one Info line for the first and one that
// sums up the rest, not a line per session; each is at Debug.
func TestMassDisconnectSummarized(t *testing.T) {
	const n = 500
	synctest.Test(t, func(t *testing.T) {
		var logs syncBuffer
		b := lmx.NewBroker(lmx.WithLogger(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
		defer b.Close()
		ctx := context.Background()
		clients := make([]*lmx.Client, n)
		for i := range clients {
			clients[i] = pipeTo(t, b)
			_, err := clients[i].Lock(ctx, fmt.Sprintf("job/%d", i))
			require.NoError(t, err)
		}
		for _, c := range clients {
			c.Close()
		}
		synctest.Wait()
		time.Sleep(3 * time.Second) // the summary's window, and the next, which counts nothing
		synctest.Wait()

		var info []logRecord
		debug, released := 0, 0
		for _, r := range logRecords(t, &logs) {
			switch r.Level {
			case "INFO":
				info = append(info, r)
			case "DEBUG":
				debug++
			}
		}
		require.Len(t, info, 2, "Info lines: %+v", info)
		assert.Equal(t, "lmx: session ended", info[0].Msg)
		assert.Equal(t, 1, info[0].Released)
		assert.Equal(t, "lmx: sessions ended", info[1].Msg)
		assert.Equal(t, n-1, info[1].Sessions)
		assert.Equal(t, n-1, info[1].Released)
		assert.Equal(t, n-1, debug, "every session summed up is logged at Debug")
		for _, r := range info {
			released += r.Released
		}
		assert.Equal(t, n, released)
	})
}

// TestRoutineSessionEndAtDebug: a client that closes holding nothing is
// routine, logged at Debug only; the next end that released a lease is
// logged at Info at once, the window being closed.
func TestRoutineSessionEndAtDebug(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs syncBuffer
		b := lmx.NewBroker(lmx.WithLogger(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
		defer b.Close()
		pipeTo(t, b).Close()
		synctest.Wait()
		recs := logRecords(t, &logs)
		require.Len(t, recs, 1)
		assert.Equal(t, "DEBUG", recs[0].Level)
		assert.Equal(t, "lmx: session ended", recs[0].Msg)

		c := pipeTo(t, b)
		_, err := c.Lock(context.Background(), "k")
		require.NoError(t, err)
		c.Close()
		synctest.Wait()
		recs = logRecords(t, &logs)
		require.Len(t, recs, 2)
		assert.Equal(t, "INFO", recs[1].Level)
		assert.Equal(t, 1, recs[1].Released)
	})
}
