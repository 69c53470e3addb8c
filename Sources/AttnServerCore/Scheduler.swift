import Foundation
import LongAttention
import LongContextModel

/// What a generation sends back to its request, in order: text pieces, then one `finished` (or `failed`).
public enum GenerationEvent: Sendable {
    case text(String)
    case finished(reason: String, promptTokens: Int, completionTokens: Int)
    case failed(String)
}

/// Why a request was not taken.
public enum AdmissionError: Error, Sendable {
    /// Every sequence busy and the queue full (429).
    case busy
    /// The request's KV cache alone exceeds the budget (400).
    case tooLarge(Int)
}

/// Runs up to `parallel` generations at once on one thread of its own, each with its own KV cache
/// (counted against `budgetBytes`), and up to `queueLimit` more waiting.
///
/// The loop makes rounds over the active sequences: each one gets one ``DecodingSequence/advance()``
/// per round, a decode step for a running stream or a prompt chunk (`prefillChunk` tokens) for a
/// new one, so a long prompt never stalls the streams already running. Sequences join (from the
/// queue, when a slot and the budget allow) and leave (finished, failed, or cancelled because their
/// client went away) between rounds. The compute threads are the model's own worker pool, driven
/// from this one thread; request handlers never run the model.
///
/// The decoding steps of one round are batched (``DecodingSequence/advance(_:threads:)``): the
/// running sequences' rows go through each weight once per step, and each row's result is bitwise
/// what it would be alone, so a stream's text never depends on what it was batched with.
///
/// `@unchecked Sendable`: request handlers only submit and cancel, under `condition` (which guards
/// the queue and the jobs); everything else is the scheduler thread's own.
public final class Scheduler: @unchecked Sendable {
    public let model: LanguageModel
    public let parallel: Int
    public let queueLimit: Int
    public let budgetBytes: Int
    public let cacheType: KVCacheType
    public let threads: Int?
    public let prefillChunk: Int
    let metrics: ServerMetrics
    // The scheduler thread's own: finished sequences' caches, within the budget's spare bytes.
    private var prefixes: PrefixCache

    private struct Job {
        let id: Int
        let prompt: [Int32]
        let options: GenerationOptions
        let bytes: Int
        let continuation: AsyncStream<GenerationEvent>.Continuation
        let submitted: ContinuousClock.Instant
    }

    private struct Active {
        let job: Job
        var firstToken: ContinuousClock.Instant?
    }

    private let condition = NSCondition()
    // Guarded by `condition`.
    private var queue: [Job] = []
    private var cancelled: Set<Int> = []
    private var activeIDs: Set<Int> = []
    private var activeBytes = 0
    private var nextID = 0
    private var stopping = false
    // The scheduler thread's own.
    private var active: [Active] = []
    // The active sequences, index for index with `active` (apart, so a batched step takes them in place).
    private var sequences: [DecodingSequence] = []
    private var thread: Thread?

    public init(model: LanguageModel, parallel: Int, queueLimit: Int, budgetBytes: Int, cacheType: KVCacheType,
                threads: Int?, prefillChunk: Int = 256, prefixEntries: Int = 0, metrics: ServerMetrics) {
        prefixes = PrefixCache(maxEntries: prefixEntries)
        (self.model, self.parallel, self.queueLimit, self.budgetBytes) = (model, max(1, parallel), max(0, queueLimit), budgetBytes)
        (self.cacheType, self.threads, self.prefillChunk, self.metrics) = (cacheType, threads, max(1, prefillChunk), metrics)
        metrics.kvBudget.set(Double(budgetBytes))
    }

    /// Starts the scheduler thread.
    public func start() {
        let t = Thread { [self] in self.loop() }
        t.name = "attn-scheduler"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    /// Stops the loop after its current round.
    public func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    /// Queues a generation. The stream ends after `finished` or `failed`; dropping it (the client
    /// went away) cancels the generation, which frees its sequence before the next round.
    public func submit(prompt: [Int32], options: GenerationOptions) throws(AdmissionError) -> AsyncStream<GenerationEvent> {
        let bytes = DecodingSequence.cacheBytes(model: model, promptTokens: prompt.count, maxTokens: options.maxTokens,
                                                type: cacheType, prefillChunk: prefillChunk)
        guard bytes <= budgetBytes else { throw .tooLarge(bytes) }
        var options = options
        options.cacheType = cacheType
        options.threads = threads
        condition.lock()
        defer { condition.unlock() }
        guard activeIDs.count + queue.count < parallel + queueLimit else {
            metrics.rejected.increment()
            throw .busy
        }
        let id = nextID
        nextID += 1
        let (stream, continuation) = AsyncStream<GenerationEvent>.makeStream(bufferingPolicy: .unbounded)
        continuation.onTermination = { [weak self] reason in
            if case .cancelled = reason { self?.cancel(id) }
        }
        queue.append(Job(id: id, prompt: prompt, options: options, bytes: bytes, continuation: continuation,
                         submitted: .now))
        metrics.queuedSequences.set(Double(queue.count))
        condition.signal()
        return stream
    }

    /// Cancels generation `id` (queued: dropped now; active: freed before the next round).
    func cancel(_ id: Int) {
        condition.lock()
        if let i = queue.firstIndex(where: { $0.id == id }) {
            queue.remove(at: i)
            metrics.queuedSequences.set(Double(queue.count))
        } else if activeIDs.contains(id) {
            cancelled.insert(id)
        }
        condition.unlock()
    }

    /// Requests waiting and sequences running (for `/health`).
    public var load: (active: Int, queued: Int) {
        condition.lock()
        defer { condition.unlock() }
        return (activeIDs.count, queue.count)
    }

    private func loop() {
        var windowStart = ContinuousClock.now, windowTokens = 0
        while true {
            // Admission, cancellation: under the lock, between rounds.
            condition.lock()
            while !stopping && active.isEmpty && queue.isEmpty { condition.wait() }
            if stopping {
                condition.unlock()
                for a in active { a.job.continuation.finish() }
                return
            }
            let gone = cancelled
            cancelled.removeAll()
            var freed = 0
            let cancelledNow = active.filter { gone.contains($0.job.id) }
            for a in cancelledNow {
                activeIDs.remove(a.job.id)
                freed += a.job.bytes
                a.job.continuation.finish()
            }
            removeActive { gone.contains($0.job.id) }
            activeBytes -= freed
            var admitted = [Job]()
            // Kept prefixes give way to sequences: the least recently used are dropped until the next fits.
            while let next = queue.first, active.count + admitted.count < parallel, activeBytes + prefixes.bytes + next.bytes > budgetBytes,
                  prefixes.evictOldest() {}
            while active.count + admitted.count < parallel, let next = queue.first, activeBytes + prefixes.bytes + next.bytes <= budgetBytes {
                queue.removeFirst()
                activeIDs.insert(next.id)
                activeBytes += next.bytes
                admitted.append(next)
            }
            metrics.queuedSequences.set(Double(queue.count))
            condition.unlock()
            for job in admitted {
                do {
                    let s = try makeSequence(job)
                    active.append(Active(job: job))
                    sequences.append(s)
                    metrics.promptTokens.increment(by: Int64(job.prompt.count))
                } catch {
                    release([job])
                    job.continuation.yield(.failed("\(error)"))
                    job.continuation.finish()
                }
            }
            metrics.activeSequences.set(Double(active.count))
            metrics.kvBytes.set(Double(sequences.reduce(0) { $0 + $1.cache.bytes }))
            if active.isEmpty { continue }

            // One round: a step (a prompt chunk or a token) for every active sequence.
            windowTokens += decodeRound()
            var finished = Set<Int>()
            for (a, s) in zip(active, sequences) where s.isFinished {
                finished.insert(a.job.id)
                prefixes.insert(tokens: s.cachedTokens, cache: s.cache)
            }
            metrics.prefixBytes.set(Double(prefixes.bytes))
            // Their admission slots went back when they finished (decodeRound); the sequences leave now.
            removeActive { finished.contains($0.job.id) }
            metrics.activeSequences.set(Double(active.count))
            let now = ContinuousClock.now
            if now - windowStart >= .seconds(1) {
                metrics.decodeRate.set(Double(windowTokens) / seconds(now - windowStart))
                (windowStart, windowTokens) = (now, 0)
            } else if active.isEmpty {
                metrics.decodeRate.set(Double(0))
            }
        }
    }

    /// A sequence for `job`, its prompt's longest kept prefix taken from the prefix cache (a
    /// prefix the cache cannot give, e.g. one a sliding ring has dropped, is prefilled instead).
    private func makeSequence(_ job: Job) throws -> DecodingSequence {
        // Under `fast`, a prompt chunk of up to 16 rows takes the 8-bit kernels and a longer one the
        // exact products: the remainder is kept longer than that, so that a prompt prefilled on a
        // kept prefix goes through the same kind of products as prefilled whole (its logits then
        // agree to float rounding).
        let remainder = model.model.matmul == .fast ? WeightMatrix.fastRowLimit + 1 : 1
        if let hit = prefixes.lookup(job.prompt, remainder: remainder),
           let s = try? DecodingSequence(model: model, prompt: job.prompt, options: job.options, prefillChunk: prefillChunk, prefix: hit) {
            metrics.prefixHits.increment()
            metrics.prefixTokens.increment(by: Int64(hit.positions))
            return s
        }
        return try DecodingSequence(model: model, prompt: job.prompt, options: job.options, prefillChunk: prefillChunk)
    }

    /// Removes the active sequences whose entry satisfies `gone`, keeping `active` and `sequences` aligned.
    private func removeActive(where gone: (Active) -> Bool) {
        var i = 0
        while i < active.count {
            if gone(active[i]) {
                active.remove(at: i)
                sequences.remove(at: i)
            } else {
                i += 1
            }
        }
    }

    /// Advances every active sequence by one step (prompt chunks one by one, the decoding steps
    /// batched) and sends what each produced; returns the tokens sampled.
    private func decodeRound() -> Int {
        var sampled = 0
        var failedIDs = Set<Int>()
        let before = sequences.map(\.tokens.count)
        let decoding = sequences.reduce(0) { $0 + ($1.isDecoding ? 1 : 0) }
        if decoding > 0 { metrics.decodeBatchRows.record(Double(decoding)) }
        let results = DecodingSequence.advance(&sequences, threads: threads)
        for i in active.indices {
            let job = active[i].job
            do {
                let step = try results[i].get()
                let added = sequences[i].tokens.count - before[i]
                if added > 0 { metrics.completionTokens.increment(by: Int64(added)) }
                if step.sampled {
                    sampled += 1
                    if active[i].firstToken == nil {
                        let t = ContinuousClock.now
                        active[i].firstToken = t
                        metrics.timeToFirstToken.record(seconds(t - job.submitted))
                    }
                }
                if !step.text.isEmpty { job.continuation.yield(.text(step.text)) }
                let s = sequences[i]
                if let reason = s.finishReason {
                    let n = s.tokens.count
                    if let first = active[i].firstToken, n > 1 {
                        let dt = seconds(ContinuousClock.now - first)
                        if dt > 0 { metrics.tokensPerSecond.record(Double(n - 1) / dt) }
                    }
                    // The slot goes back before the client sees the end, so a client that sends its
                    // next request on the answer finds room; the sequence leaves after this round
                    // (admission waits for the next one).
                    release([job])
                    job.continuation.yield(.finished(reason: reason, promptTokens: job.prompt.count, completionTokens: n))
                    job.continuation.finish()
                }
            } catch {
                release([job])
                job.continuation.yield(.failed("\(error)"))
                job.continuation.finish()
                // A failed sequence leaves the round like a finished one.
                failedIDs.insert(job.id)
            }
        }
        if !failedIDs.isEmpty { removeActive { failedIDs.contains($0.job.id) } }
        return sampled
    }

    private func release(_ jobs: [Job]) {
        guard !jobs.isEmpty else { return }
        condition.lock()
        for j in jobs {
            activeIDs.remove(j.id)
            cancelled.remove(j.id)
            activeBytes -= j.bytes
        }
        condition.unlock()
    }

    private func seconds(_ d: Duration) -> Double {
        let c = d.components
        return Double(c.seconds) + Double(c.attoseconds) * 1e-18
    }
}
