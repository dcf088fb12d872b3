package redis

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lmx-go/lmx"
	goredis "github.com/redis/go-redis/v9"
)

// The records the scripts keep in Redis, as the Locker writes and reads them,
// and the scripts' replies.

// record is the waiter record of a request (see scripts.go).
func (lk *Locker) record(id string, s *session, r lmx.LockRequest) string {
	grace := int64(-1)
	if r.Preempt >= 0 {
		grace = r.Preempt.Milliseconds()
	}
	return strings.Join([]string{id, s.id, lk.id, flag(r.Shared, "s", "x"), strconv.FormatInt(r.TTL.Milliseconds(), 10),
		flag(r.KeepOnDisconnect, "1", "0"), strconv.Itoa(r.Priority),
		strconv.FormatInt(max(r.LockDelay, 0).Milliseconds(), 10), strconv.FormatInt(grace, 10),
		flag(r.NoPreempt, "1", "0"), r.Owner}, "|")
}

func flag(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}

// holderRecord is what the Go side reads of a holder record (see
// scripts.go).
type holderRecord struct {
	token          uint64
	shared         bool
	since, expires time.Time // expires zero for none
	preempt        bool      // a preemption deadline is set
	owner          string
}

// waiterFields is how many fields a waiter record has, holderFields a
// holder record; the last, the owner, may hold "|".
const waiterFields, holderFields = 11, 14

func parseHolder(rec string) (h holderRecord, ok bool) {
	f := strings.SplitN(rec, "|", holderFields)
	if len(f) != holderFields {
		return h, false
	}
	h.token, _ = strconv.ParseUint(f[0], 10, 64)
	if f[1] != "0" {
		h.expires = msTime(f[1])
	}
	h.since = msTime(f[2])
	h.preempt = f[3] != "0"
	h.shared = f[6] == "s"
	h.owner = f[13]
	return h, true
}

// reply is a script's answer about the caller's request.
type reply struct {
	kind  string // "g" granted, "w" waiting, "n" gone, "l" locked, "m" limit mismatch
	token uint64
	ms    int64 // g: ms left of its TTL (0: none); w: ms until a holder may end (-1: never); m: the key's limit
}

func parseReply(v any) (reply, error) {
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return reply{}, fmt.Errorf("lmx/redis: %w", errUnexpected(v))
	}
	r := reply{}
	r.kind, _ = a[0].(string)
	for i, x := range a[1:] {
		var n int64
		switch x := x.(type) {
		case int64:
			n = x
		case string:
			n, _ = strconv.ParseInt(x, 10, 64)
		}
		if i == 0 && r.kind == "g" {
			r.token = uint64(n)
		} else {
			r.ms = n
		}
	}
	return r, nil
}

// run runs a script about key's request id with the args after the
// script's first three.
func (lk *Locker) run(ctx context.Context, s *goredis.Script, key, id string, args ...any) (any, error) {
	return lk.runOn(ctx, s, lk.keys(key), key, id, args...)
}

// runOn is run with key's Redis keys made already (see Locker.keys).
func (lk *Locker) runOn(ctx context.Context, s *goredis.Script, keys []string, key, id string, args ...any) (any, error) {
	a := make([]any, 0, 3+len(args))
	a = append(a, lk.arg, key, id)
	return s.Run(ctx, lk.rdb, keys, append(a, args...)...).Result()
}

func errUnexpected(v any) error { return fmt.Errorf("unexpected script reply %v", v) }
