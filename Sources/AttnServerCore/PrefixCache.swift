import LongAttention
import LongContextModel

/// The KV caches of recently finished sequences, kept so that a new request whose prompt starts
/// with the same ids skips prefilling them (a chat's growing history, a shared system prompt).
///
/// Entries are the caches themselves with the ids they hold (``DecodingSequence/cachedTokens``).
/// A lookup takes the entry sharing the longest prefix with the prompt (at least `minimumTokens`,
/// at most the prompt's length − 1: the last prompt token always runs, for its logits; the
/// scheduler may ask for a longer remainder). Entries
/// are evicted least recently used first when the scheduler needs their bytes for a sequence
/// (they count against the same KV budget) or beyond `maxEntries`. An entry whose ids are a prefix
/// of a newer one's is dropped: the newer serves every prompt the older could.
///
/// Not thread-safe: the scheduler's thread owns it.
struct PrefixCache {
    struct Entry {
        let tokens: [Int32]
        let cache: KVCache
        var lastUse: Int
    }

    let maxEntries: Int
    let minimumTokens: Int
    private(set) var entries: [Entry] = []
    private var clock = 0

    init(maxEntries: Int, minimumTokens: Int = 16) {
        (self.maxEntries, self.minimumTokens) = (max(0, maxEntries), max(1, minimumTokens))
    }

    var bytes: Int { entries.reduce(0) { $0 + $1.cache.bytes } }

    /// Keeps a finished sequence's cache (nothing when disabled or the cache holds too few ids).
    mutating func insert(tokens: [Int32], cache: KVCache) {
        guard maxEntries > 0, tokens.count >= minimumTokens else { return }
        entries.removeAll { $0.tokens.count <= tokens.count && tokens.starts(with: $0.tokens) }
        clock += 1
        entries.append(Entry(tokens: tokens, cache: cache, lastUse: clock))
        while entries.count > maxEntries { evictOldest() }
    }

    /// The entry sharing the longest usable prefix with `prompt`, and that prefix's length, which
    /// leaves at least `remainder` (≥ 1) prompt tokens to prefill.
    mutating func lookup(_ prompt: [Int32], remainder: Int = 1) -> (cache: KVCache, positions: Int)? {
        var best: (index: Int, length: Int)?
        for (i, e) in entries.enumerated() {
            var n = 0
            let limit = min(e.tokens.count, prompt.count - max(1, remainder))
            while n < limit && e.tokens[n] == prompt[n] { n += 1 }
            if n >= minimumTokens, n > (best?.length ?? 0) { best = (i, n) }
        }
        guard let best else { return nil }
        clock += 1
        entries[best.index].lastUse = clock
        return (entries[best.index].cache, best.length)
    }

    /// Drops the least recently used entry; false when there is none.
    @discardableResult
    mutating func evictOldest() -> Bool {
        guard let i = entries.indices.min(by: { entries[$0].lastUse < entries[$1].lastUse }) else { return false }
        entries.remove(at: i)
        return true
    }
}
