import AttentionTensor
import CAttentionKernels
import ChatTemplate
import LongAttention
import Foundation

/// Passkey retrieval (Mohtashami & Jaggi 2023, Landmark Attention's format): a number hidden at
/// some depth of a long run of filler must be repeated at the end.
///
///     <filler …> The pass key is 31742. Remember it. 31742 is the pass key. <filler …>
///     What is the pass key? The pass key is
///
/// The filler is "The grass is green. The sky is blue. The sun is yellow. Here we go. There and
/// back again. " repeated, its start cut to the length; the key sentence goes in at the sentence
/// boundary of the filler nearest the requested depth (0: first, 1: just before the question). Landmark's instruction
/// line ("There is an important info hidden inside a lot of irrelevant text…") is left out: it is
/// 150 bytes, most of a 256-byte window, and tells a 3M-parameter byte model nothing. A prompt is
/// BOS + those bytes, exactly `length` tokens; the answer is " K." after it. Keys are uniform in
/// 1...50,000, so guessing is right with probability 2e-5.
public struct PasskeyTask: Sendable {
    public static let filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    public static let question = "\nWhat is the pass key? The pass key is"
    public static let maxKey = 50_000

    public static func needle(_ key: Int) -> String { "The pass key is \(key). Remember it. \(key) is the pass key. " }
    public static func answer(_ key: Int) -> String { " \(key)." }

    /// The shortest prompt that holds `key` (no filler at all).
    public static func minimumLength(key: Int) -> Int { 1 + needle(key).utf8.count + question.utf8.count }

    /// The prompt's tokens: BOS, filler with the needle at `depth`, the question; `length` tokens.
    public static func prompt(length: Int, depth: Double, key: Int) throws -> [Int32] {
        try requireOption((0...1).contains(depth), "depth", depth, "in 0...1")
        try requireOption((1...maxKey).contains(key), "key", key, "in 1...\(maxKey)")
        let fillerBytes = length - minimumLength(key: key)
        guard fillerBytes >= 0 else {
            throw ModelError.invalidOption(name: "length", value: "\(length)", expected: "at least \(minimumLength(key: key)) tokens (the key sentence and the question)")
        }
        // The filler's last `fillerBytes` bytes of whole repetitions: it ends on a full sentence
        // (the question follows one), and only its start may be a partial sentence.
        let unit = Array(filler.utf8)
        let reps = fillerBytes / unit.count + 1
        let stream = Array((0..<reps).map { _ in unit }.joined())
        let first = stream.count - fillerBytes
        let text = Array(stream[first...])
        // Sentence starts (after ". " in the stream) and the end: where the needle may go.
        var boundaries = [Int]()
        for i in 0..<text.count where first + i >= 2 && stream[first + i - 2] == UInt8(ascii: ".") && stream[first + i - 1] == UInt8(ascii: " ") {
            boundaries.append(i)
        }
        if first == 0 { boundaries.insert(0, at: 0) }
        boundaries.append(text.count)
        let target = depth * Double(text.count)
        let at = boundaries.min { abs(Double($0) - target) < abs(Double($1) - target) } ?? 0
        let bytes = Array(text[..<at]) + Array(needle(key).utf8) + Array(text[at...]) + Array(question.utf8)
        let tokens = [ByteTokenizer.bos] + bytes.map { Int32($0) }
        precondition(tokens.count == length)
        return tokens
    }

    /// The first integer in `generated` (leading spaces skipped), or nil.
    public static func firstNumber(_ generated: [Int32]) -> Int? {
        let text = ByteTokenizer.decode(generated)
        guard let start = text.firstIndex(where: \.isNumber) else { return nil }
        let digits = text[start...].prefix { $0.isASCII && $0.isNumber }.prefix(9)
        return Int(digits)
    }
}

/// The short fine-tune on the task that every model gets before it is scored: prompts of the given
/// short lengths, the key at a uniform depth, the next-token loss on every token of prompt and
/// answer (the needle repeats its key, so copying is taught at short range too), or on the answer only.
public struct PasskeyTuning: Sendable {
    public var steps = 100
    public var batch = 8
    /// Prompt lengths drawn uniformly per step (each micro-batch shares one length).
    public var lengths = [128, 256]
    public var learningRate = 1e-3
    public var seed: UInt64 = 1
    /// Loss on the answer's tokens only (otherwise on every token).
    public var answerOnly = false
    public var threads: Int? = nil
    public init() {}

    /// Fine-tunes `model`'s parameters in place (AdamW, constant rate after 10 warm-up steps,
    /// global-norm clip 1); returns the mean loss (nats) on the answers' tokens at each step.
    public func run(_ model: CausalLM, progress: (Int, Double) -> Void = { _, _ in }) throws -> [Double] {
        try requireOption(steps >= 0, "steps", steps, ">= 0")
        try requireOption(batch >= 1, "batch", batch, ">= 1")
        try requireOption(!lengths.isEmpty, "lengths", lengths, "at least one length (passkey tuning)")
        try requireOption(learningRate > 0, "learning rate", learningRate, "> 0")
        for L in lengths where L < PasskeyTask.minimumLength(key: PasskeyTask.maxKey) + PasskeyTask.answer(PasskeyTask.maxKey).utf8.count
            || L > 1 << 16 {
            throw ModelError.invalidOption(name: "length", value: "\(L)", expected: "in \(PasskeyTask.minimumLength(key: PasskeyTask.maxKey) + PasskeyTask.answer(PasskeyTask.maxKey).utf8.count)...65536 (a key and its answer)")
        }
        let optimizer = try AdamW(parameters: model.parameters, weightDecay: 0)
        let gradients = try ParameterSet(zerosLike: model.parameters)
        var rng = SplitMix64(seed: seed)
        var losses = [Double]()
        for step in 0..<steps {
            let T = lengths[Int(rng.next() % UInt64(lengths.count))]
            var tokens = [Int32](), targets = [Int32](), answerPositions = [Int]()
            for _ in 0..<batch {
                let key = Int(rng.next() % UInt64(PasskeyTask.maxKey)) + 1
                let depth = Double(rng.next() % 1001) / 1000
                let answer = Array(PasskeyTask.answer(key).utf8).map { Int32($0) }
                // The prompt shortened by the answer's length, so prompt + answer is T tokens.
                let prompt = try PasskeyTask.prompt(length: T - answer.count, depth: depth, key: key)
                let sequence = prompt + answer
                var t = [Int32](repeating: -1, count: T)
                if !answerOnly { for p in 0..<(T - 1) { t[p] = sequence[p + 1] } }
                // Position p predicts token p + 1: the answer's tokens are the targets of the
                // positions from the prompt's last token on.
                for (i, a) in answer.enumerated() { t[prompt.count - 1 + i] = a }
                answerPositions.append(contentsOf: (0..<answer.count).map { tokens.count + prompt.count - 1 + $0 })
                tokens += sequence
                targets += t
            }
            gradients.zero()
            let r = try model.loss(tokens: tokens, batch: batch, length: T, targets: targets, gradients: gradients,
                                   keepLogits: !answerOnly, threads: threads)
            // The answers' own loss, from the logits (before the gradient overwrote them).
            var answerLoss = r.loss
            if let logits = r.logits {
                let V = model.config.vocabSize, z = logits.unsafeBaseAddress
                var sum = 0.0
                for p in answerPositions {
                    var target = targets[p]
                    sum += ak_cross_entropy_rows(UnsafeMutablePointer(mutating: z + p * V), V, 1, V, &target, 0, 0)
                }
                answerLoss = sum / Double(answerPositions.count)
            }
            let norm = gradients.squaredNorm().squareRoot()
            if norm > 1 {
                let s = Float(1 / norm)
                for i in 0..<gradients.count { gradients.scalars[i] *= s }
            }
            let lr = learningRate * min(1, Double(step + 1) / 10)
            try optimizer.update(model.parameters, gradients: gradients, lr: Float(lr))
            losses.append(answerLoss)
            progress(step, answerLoss)
        }
        return losses
    }
}

/// Accuracy of greedy passkey retrieval on a grid of prompt lengths and needle depths.
public struct PasskeyResults: Sendable, Codable {
    public let lengths: [Int]
    public let depths: [Double]
    public let trials: Int
    /// `accuracy[i][j]`: the fraction of trials at `lengths[i]` and `depths[j]` whose first
    /// generated number was the key.
    public let accuracy: [[Double]]

    public var mean: Double { accuracy.flatMap { $0 }.reduce(0, +) / Double(max(1, lengths.count * depths.count)) }

    /// The mean accuracy over the lengths in `range`.
    public func mean(lengths range: ClosedRange<Int>) -> Double? {
        let rows = lengths.indices.filter { range.contains(lengths[$0]) }
        guard !rows.isEmpty else { return nil }
        return rows.map { accuracy[$0].reduce(0, +) / Double(depths.count) }.reduce(0, +) / Double(rows.count)
    }

    /// Scores `model`: for each length, depth and trial a fresh key (a pure function of `seed`),
    /// the prompt, then up to 8 greedy tokens; right when their first number is the key.
    public init(model: CausalLM, lengths: [Int], depths: [Double], trials: Int, seed: UInt64 = 7,
                threads: Int? = nil) throws {
        try requireOption(!lengths.isEmpty, "lengths", lengths, "at least one length (passkey scoring)")
        try requireOption(!depths.isEmpty, "depths", depths, "at least one depth (passkey scoring)")
        try requireOption(trials >= 1, "trials", trials, ">= 1")
        var rng = SplitMix64(seed: seed)
        var accuracy = [[Double]]()
        for L in lengths {
            var row = [Double]()
            for depth in depths {
                var right = 0
                for _ in 0..<trials {
                    let key = Int(rng.next() % UInt64(PasskeyTask.maxKey)) + 1
                    let prompt = try PasskeyTask.prompt(length: L, depth: depth, key: key)
                    let out = try model.generate(prompt: prompt, maxTokens: 8, threads: threads)
                    if PasskeyTask.firstNumber(out) == key { right += 1 }
                }
                row.append(Double(right) / Double(trials))
            }
            accuracy.append(row)
        }
        (self.lengths, self.depths, self.trials, self.accuracy) = (lengths, depths, trials, accuracy)
    }
}

extension PasskeyResults {
    /// Results measured elsewhere (``TokenizedPasskey``).
    public init(lengths: [Int], depths: [Double], trials: Int, accuracy: [[Double]]) {
        (self.lengths, self.depths, self.trials, self.accuracy) = (lengths, depths, trials, accuracy)
    }
}

/// Passkey retrieval for a pretrained model with a real tokenizer (Landmark Attention's prompt as
/// its `run_test.py` builds it: five parts joined by newlines, the instruction line included,
/// tokenized by the model's own tokenizer; no fine-tune):
///
///     There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you about the important information there.
///     <filler before …>
///     The pass key is 31742. Remember it. 31742 is the pass key.
///     <filler after …>
///     What is the pass key? The pass key is
///
/// The key sentence sits on a line of its own, so at depth 1 (no filler after it) an empty line
/// separates it from the question, as in Landmark's prompts; filler repetitions are joined by a
/// space. A prompt of length L (tokens) holds as many whole filler repetitions as fit in L tokens
/// (so its length is L or a few tokens less); the key goes after the repetition nearest the depth.
/// With a chat template the whole text is the user's message and the generation prompt follows.
/// The answer is the first number of up to 8 greedy tokens.
public enum TokenizedPasskey {
    public static let instruction = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you about the important information there."
    public static let filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    public static let question = "What is the pass key? The pass key is"
    public static func needle(_ key: Int) -> String { "The pass key is \(key). Remember it. \(key) is the pass key." }

    /// The prompt text with `reps` filler repetitions and the key after `round(depth · reps)` of them.
    public static func text(repetitions reps: Int, depth: Double, key: Int) -> String {
        let before = Int((depth * Double(reps)).rounded())
        func garbage(_ n: Int) -> String { Array(repeating: filler, count: n).joined(separator: " ") }
        return [instruction, garbage(before), needle(key), garbage(reps - before), question].joined(separator: "\n")
    }

    /// The ids of the longest prompt of at most `length` tokens (`render` maps a text to the ids the
    /// model reads: the tokenizer, through the chat template or not).
    public static func prompt(length: Int, depth: Double, key: Int, render: (String) throws -> [Int32]) throws -> [Int32] {
        try requireOption((0...1).contains(depth), "depth", depth, "in 0...1")
        try requireOption((1...PasskeyTask.maxKey).contains(key), "key", key, "in 1...\(PasskeyTask.maxKey)")
        try requireOption(length >= 1, "length", length, ">= 1")
        let bare = try render(text(repetitions: 0, depth: depth, key: key)).count
        guard bare <= length else {
            throw ModelError.invalidOption(name: "length", value: "\(length)", expected: "at least \(bare) tokens (the instruction, key and question)")
        }
        let per = Double(try render(text(repetitions: 64, depth: depth, key: key)).count - bare) / 64
        var reps = max(0, Int(Double(length - bare) / max(per, 1e-9)))
        var ids = try render(text(repetitions: reps, depth: depth, key: key))
        while ids.count > length && reps > 0 {
            reps -= max(1, Int(Double(ids.count - length) / max(per, 1e-9)))
            reps = max(0, reps)
            ids = try render(text(repetitions: reps, depth: depth, key: key))
        }
        return ids
    }

    /// The first integer in `text` (leading non-digits skipped), or nil.
    public static func firstNumber(_ text: String) -> Int? {
        guard let start = text.firstIndex(where: { $0.isASCII && $0.isNumber }) else { return nil }
        return Int(text[start...].prefix { $0.isASCII && $0.isNumber }.prefix(9))
    }

    /// One cell's outcome.
    public struct Trial: Sendable, Codable {
        public let length: Int, depth: Double, key: Int, promptTokens: Int, answer: String, correct: Bool, seconds: Double
    }

    /// Scores `lm` (its ``LanguageModel/model`` may carry a context extension) on every (length,
    /// depth) with `trials` keys each, a pure function of `seed`; greedy, 8 tokens, a KV cache of `cacheType`.
    public static func score(_ lm: LanguageModel, model: CausalLM, lengths: [Int], depths: [Double], trials: Int, chat: Bool,
                             cacheType: KVCacheType, seed: UInt64 = 7, threads: Int? = nil,
                             progress: (_ trial: Trial, _ prompt: [Int32]) -> Void = { _, _ in }) throws -> (results: PasskeyResults, trials: [Trial]) {
        try requireOption(!lengths.isEmpty, "lengths", lengths, "at least one length (passkey scoring)")
        try requireOption(!depths.isEmpty, "depths", depths, "at least one depth (passkey scoring)")
        try requireOption(trials >= 1, "trials", trials, ">= 1")
        func render(_ s: String) throws -> [Int32] {
            chat ? lm.encode(try lm.chatPrompt([ChatMessage(role: "user", content: s)])) : lm.encode(s)
        }
        var rng = SplitMix64(seed: seed)
        var accuracy = [[Double]](), all = [Trial]()
        for L in lengths {
            var row = [Double]()
            for depth in depths {
                var right = 0
                for _ in 0..<trials {
                    let key = Int(rng.next() % UInt64(PasskeyTask.maxKey)) + 1
                    let ids = try prompt(length: L, depth: depth, key: key, render: render)
                    let t0 = Date()
                    var out = [Int32]()
                    try model.generate(prompt: ids, maxTokens: 8, stopTokens: lm.endTokens, cacheType: cacheType, threads: threads) {
                        out.append($0)
                        return true
                    }
                    let answer = try lm.decode(out)
                    let ok = firstNumber(answer) == key
                    if ok { right += 1 }
                    let t = Trial(length: L, depth: depth, key: key, promptTokens: ids.count, answer: answer, correct: ok,
                                  seconds: Date().timeIntervalSince(t0))
                    all.append(t)
                    progress(t, ids)
                }
                row.append(Double(right) / Double(trials))
            }
            accuracy.append(row)
        }
        return (PasskeyResults(lengths: lengths, depths: depths, trials: trials, accuracy: accuracy), all)
    }
}
