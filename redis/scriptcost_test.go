package redis_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/lmx-go/lmx/redis"
	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// BenchmarkScripts measures the Redis time of the scripts themselves, with
// no I/O: cycles of them run inside one EVAL, each script a function called
// with its own ARGV, and the fastest of the runs counts. The Redis time of
// a cycle is its scripts' time, their commands included, plus what no
// script sees: reading the requests, writing the replies and messages.
//
//	uncontended: an acquire and a release of a free key, both fast paths;
//	hand-off: a request queueing behind the holder, then the holder's
//	release granting it, as on a hot key.
func BenchmarkScripts(b *testing.B) {
	rdb := goredis.NewClient(&goredis.Options{Addr: addr})
	defer rdb.Close()
	call := func(src string) string { return "(function(ARGV) " + src + "\nend)(args)" }
	acq, rel := call(redis.AcquireLua), call(redis.ReleaseLua)
	// rec is the Lua of a waiter record of id, of session sid.
	rec := func(id, sid string) string { return id + " .. '|" + sid + "|LK|x|0|0|0|0|-1|0|'" }
	const n = 100
	for _, c := range []struct{ name, body string }{
		{"uncontended", fmt.Sprintf(`
local args
for i = 1, %d do
	args = {'B:', 'k', 'id', %s, '1', '0'}
	%s
	args = {'B:', 'k', 'id', '', '1'}
	%s
end`, n, rec("'id'", "S1"), acq, rel)},
		{"hand-off", fmt.Sprintf(`
local args = {'B:', 'k', 'h', %s, '1', '0'}
%s
local holder = 'h'
for i = 1, %d do
	local id, sid = 'w' .. i, 'S' .. (i %% 2 + 1)
	args = {'B:', 'k', id, %s, '1', '0'}
	%s
	args = {'B:', 'k', holder, '', '1'}
	%s
	holder = id
end`, rec("'h'", "S1"), acq, n, rec("id", "' .. sid .. '"), acq, rel)},
	} {
		b.Run(c.name, func(b *testing.B) {
			ctx := b.Context()
			require.NoError(b, rdb.Set(ctx, "B:s:S1", "x", time.Hour).Err())
			require.NoError(b, rdb.Set(ctx, "B:s:S2", "x", time.Hour).Err())
			best := time.Duration(1 << 62)
			for b.Loop() {
				require.NoError(b, rdb.Del(ctx, "B:q:k", "B:h:k", "B:m:k").Err())
				start := time.Now()
				left, err := rdb.Eval(ctx, c.body+"\nreturn redis.call('LLEN', KEYS[1])", []string{"B:q:k", "B:h:k", "B:m:k"}).Int()
				best = min(best, time.Since(start))
				require.NoError(b, err)
				require.Zero(b, left, "requests left queued")
			}
			b.ReportMetric(float64(best.Nanoseconds())/n/1e3, "best-µs/cycle")
		})
	}
}
