package redis

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/oklog/ulid/v2"
	goredis "github.com/redis/go-redis/v9"
)

var _ lmx.Admin = (*Locker)(nil)

// Release ends the lease of key whose lock id is id, from any Locker on the
// same prefix; its holder sees lmx.ErrReleased.
func (lk *Locker) Release(ctx context.Context, key string, id ulid.ULID) error {
	if err := checkKey(key); err != nil {
		return err
	}
	v, err := lk.run(ctx, releaseScript, key, id.String(), "r")
	if err != nil {
		return lk.wrap(ctx, err)
	}
	if v != int64(1) {
		return lmx.ErrNotHeld
	}
	return nil
}

// ForceUnlock ends every lease of key with lmx.ErrForced.
func (lk *Locker) ForceUnlock(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	v, err := lk.run(ctx, forceScript, key, "")
	if err != nil {
		return lk.wrap(ctx, err)
	}
	if v == int64(0) {
		return lmx.ErrNotHeld
	}
	return nil
}

// Inspect describes key's holders and waiters as Redis has them, after
// removing the dead ones. Since and Expires are Redis's clock.
func (lk *Locker) Inspect(ctx context.Context, key string) (lmx.KeyInfo, error) {
	if err := checkKey(key); err != nil {
		return lmx.KeyInfo{}, err
	}
	v, err := lk.run(ctx, viewScript, key, "")
	if err != nil {
		return lmx.KeyInfo{}, lk.wrap(ctx, err)
	}
	a, _ := v.([]any)
	if len(a) != 5 {
		return lmx.KeyInfo{}, lk.wrap(ctx, errUnexpected(v))
	}
	ki := lmx.KeyInfo{Key: key}
	lim, _ := a[0].(string)
	ki.Limit, _ = strconv.Atoi(lim)
	counts := map[string]int{}
	ms, _ := a[4].([]any)
	for i := 0; i+1 < len(ms); i += 2 {
		f, _ := ms[i].(string)
		n, _ := ms[i+1].(string)
		if id, ok := strings.CutPrefix(f, "c:"); ok {
			counts[id], _ = strconv.Atoi(n)
		}
	}
	hs, _ := a[1].([]any)
	for i := 0; i+1 < len(hs); i += 2 {
		id, _ := hs[i].(string)
		rec, _ := hs[i+1].(string)
		r, ok := parseHolder(rec)
		if !ok {
			continue
		}
		h := lmx.HolderInfo{Token: r.token, Shared: r.shared, Owner: r.owner, Count: 1 + counts[id],
			Since: r.since, Expires: r.expires}
		h.ID, _ = ulid.ParseStrict(id)
		ki.Holders = append(ki.Holders, h)
	}
	// HGETALL has no order; grant order is token order.
	slices.SortFunc(ki.Holders, func(a, b lmx.HolderInfo) int { return cmp.Compare(a.Token, b.Token) })
	ws, _ := a[2].([]any)
	for _, w := range ws {
		entry, _ := w.(string)
		_, rec, _ := strings.Cut(entry, "|") // after when it queued
		f := strings.SplitN(rec, "|", waiterFields)
		if len(f) != waiterFields {
			continue
		}
		p, _ := strconv.Atoi(f[6])
		ki.Waiters = append(ki.Waiters, lmx.WaiterInfo{Owner: f[10], Priority: p, Shared: f[3] == "s"})
	}
	return ki, nil
}

func msTime(s string) time.Time {
	ms, _ := strconv.ParseInt(s, 10, 64)
	return time.UnixMilli(ms)
}

// Stats counts the keys, holders and waiters under the Locker's prefix
// (dead ones that no one has touched since included) and the live
// sessions (a Locker has one from its first Lock until its Close or the
// session's loss), by a SCAN of the prefix's keys, and the grants,
// expiries, forced ends, preemptions and lost sessions' leases Redis has
// counted, with the histograms of how long granted requests waited and
// ended leases were held (in Redis's clock, to the millisecond).
func (lk *Locker) Stats(ctx context.Context) (lmx.Stats, error) {
	names, err := lk.scanNames(ctx, escapeGlob(lk.pfx)+"*")
	if err != nil {
		return lmx.Stats{}, err
	}
	var st lmx.Stats
	var meta []string
	for _, k := range names {
		if m, ok := strings.CutPrefix(k, lk.pfx+"m:"); ok {
			meta = append(meta, m)
		} else if strings.HasPrefix(k, lk.pfx+"s:") && len(k) == len(lk.pfx)+2+ulid.EncodedSize {
			st.Sessions++
		}
	}
	keys, err := lk.live(ctx, meta)
	if err != nil {
		return lmx.Stats{}, err
	}
	var countsCmd *goredis.MapStringStringCmd
	var tokenCmd *goredis.StringCmd
	_, err = lk.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		countsCmd, tokenCmd = p.HGetAll(ctx, lk.pfx+"n"), p.Get(ctx, lk.pfx+"t")
		return nil
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		return lmx.Stats{}, lk.wrap(ctx, err)
	}
	counts := countsCmd.Val()
	for _, k := range keys {
		st.Keys++
		st.Holders += k.Holders
		st.Waiters += k.Waiters
	}
	n := func(f string) uint64 {
		v, _ := strconv.ParseUint(counts[f], 10, 64)
		return v
	}
	if tok, err := strconv.ParseUint(tokenCmd.Val(), 10, 64); err == nil {
		st.Grants = tok - n("g0") // a token per grant
	}
	st.Expiries, st.Forced, st.Preemptions, st.SessionLost = n("x"), n("f"), n("p"), n("s")
	for hist, h := range map[string]*lmx.Histogram{"w": &st.WaitTime, "h": &st.HoldTime} {
		for i := range h.Counts {
			h.Counts[i] = n(hist + strconv.Itoa(i))
		}
		h.Sum = time.Duration(n(hist+"s")) * time.Millisecond
	}
	return st, nil
}

var _ lmx.Lister = (*Locker)(nil)

// List returns the live keys under the Locker's prefix that start with
// prefix, sorted, at most limit of them (lmx.DefaultListLimit when limit
// <= 0, at most lmx.MaxListLimit), by a SCAN of the prefix's keys. Like
// Stats, it counts the dead holders and waiters no one has reaped yet.
func (lk *Locker) List(ctx context.Context, prefix string, limit int) ([]lmx.KeyStat, error) {
	if limit <= 0 {
		limit = lmx.DefaultListLimit
	}
	limit = min(limit, lmx.MaxListLimit)
	meta := lk.pfx + "m:"
	names, err := lk.scanNames(ctx, escapeGlob(meta+prefix)+"*")
	if err != nil {
		return nil, err
	}
	for i, n := range names {
		names[i] = strings.TrimPrefix(n, meta)
	}
	keys, err := lk.live(ctx, names)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(keys, func(a, b lmx.KeyStat) int { return cmp.Compare(a.Key, b.Key) })
	return keys[:min(len(keys), limit)], nil
}

// scanNames returns the Redis keys that match pattern, by a SCAN.
func (lk *Locker) scanNames(ctx context.Context, pattern string) ([]string, error) {
	var names []string
	iter := lk.rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		names = append(names, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return nil, lk.wrap(ctx, err)
	}
	return names, nil
}

// live returns those of keys, lock keys with metadata in Redis, that have
// a holder or a waiter there, in no order.
func (lk *Locker) live(ctx context.Context, keys []string) ([]lmx.KeyStat, error) {
	meta := lk.pfx + "m:"
	lim := make([]*goredis.StringCmd, len(keys))
	hl := make([]*goredis.IntCmd, len(keys))
	ql := make([]*goredis.IntCmd, len(keys))
	_, err := lk.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, k := range keys {
			lim[i] = p.HGet(ctx, meta+k, "limit")
			hl[i] = p.HLen(ctx, lk.pfx+"h:"+k)
			ql[i] = p.LLen(ctx, lk.pfx+"q:"+k)
		}
		return nil
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		return nil, lk.wrap(ctx, err)
	}
	var live []lmx.KeyStat
	for i, k := range keys {
		ks := lmx.KeyStat{Key: k, Holders: int(hl[i].Val()), Waiters: int(ql[i].Val())}
		if ks.Holders+ks.Waiters == 0 {
			continue
		}
		ks.Limit, _ = strconv.Atoi(lim[i].Val())
		live = append(live, ks)
	}
	return live, nil
}

// escapeGlob escapes the characters special to a Redis MATCH pattern.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\^-`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
