import ArgumentParser
import AttentionTensor
import Foundation
import LongAttention
import LongContextModel

// The parts of the long-context recipe that change a pretrained model's attention or weights:
// Temp-LoRA on its quantised weights (`lm pretrained-temp-lora`) and sparse attention fitted into
// it without training (`lm pretrained-sparse`). Each writes one JSON document with --json.

/// The KJV books `names` (comma-separated abbreviations, or `long` for Job, Luke, Heb in that
/// order), each as its text (verses one per line).
/// Registered in `attn lm`'s subcommands.
let pretrainedRecipeCommands: [ParsableCommand.Type] = [LMPretrainedTempLoRA.self, LMPretrainedSparse.self, LMPretrainedInfini.self]

func corpusBookTexts(_ names: String, corpus: String) throws -> [(name: String, text: String)] {
    let text = try TextCorpus(path: corpus)
    let wanted = names == "long" ? ["Job", "Luke", "Heb"] : names.split(separator: ",").map(String.init)
    guard !wanted.isEmpty else { throw ValidationError("--books names no book") }
    return try wanted.map { name in
        guard let d = text.documents.first(where: { $0.name == name }) else {
            throw ValidationError("no book \(name) in \(corpus) (abbreviations as `bible` prints them: Job, Luke, Heb)")
        }
        return (name, d.text)
    }
}

func parseInts(_ s: String, _ option: String, minimum: Int = 1) throws -> [Int] {
    let parts = s.split(separator: ",", omittingEmptySubsequences: false)
    let v = parts.compactMap { Int($0) }
    guard !v.isEmpty, v.count == parts.count, v.allSatisfy({ $0 >= minimum }) else {
        throw ValidationError("--\(option) must be comma-separated integers >= \(minimum), got \(s)")
    }
    return v
}

func stderrLine(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

struct LMPretrainedTempLoRA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pretrained-temp-lora",
        abstract: "Temp-LoRA (Wang et al. 2024) on a GGUF or Hugging Face model over long KJV books: each chunk scored with the current adapter, then trained on; perplexity with and without, on all chunks and on each book's second half.",
        discussion: """
            The adapter is applied unmerged on the model's own (quantised) weights: every base product, in the backward \
            too, dequantises the stored blocks a panel at a time. The paper's recipe is the default (chunks of 1,024 \
            tokens, 2 epochs, rank 64 and alpha 64 on every projection, lr 5e-5 constant). Each book gets a fresh adapter; \
            the base never changes. The first epoch's forward pass is the chunk's adapted score (the same adapter, the same \
            tokens). --epochs 0 scores the base alone at --window (the long-window side of the paper's trade-off).
            """)
    @Option(help: "A GGUF file or a Hugging Face folder.") var model: String
    @Option(help: "KJV books (comma-separated: Job,Luke,Heb), or long (the three).") var books = "Heb"
    @Option(help: "The corpus (make corpus writes it).") var corpus = "data/kjv.txt"
    @Option(help: "Read at most this many tokens of each book (0: all).") var maxTokens = 0
    @Option(help: "Tokens per chunk.") var chunk = 1024
    @Option(help: "Preceding tokens of context (W).") var window = 1024
    @Option(help: "Training epochs per chunk (0: score the base only).") var epochs = 2
    @Option(help: "LoRA rank.") var rank = 64
    @Option(help: "lora_alpha (the update is scaled by alpha / rank).") var alpha = 64.0
    @Option(help: "Comma-separated target modules.") var targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    @Option(help: "Constant learning rate (AdamW, no weight decay).") var lr = 5e-5
    @Option(help: "Seed of the adapter's A.") var seed: UInt64 = 1
    @Option(help: "Write every chunk's scores and the summaries as JSON here.") var json: String?
    @Option(help: "Worker threads (default: all cores).") var threads: Int?
    @Flag(help: "Print only the summaries, not a line per chunk.") var quiet = false

    func validate() throws {
        guard chunk >= 2 else { throw ValidationError("--chunk must be at least 2, got \(chunk)") }
        guard window >= 0, epochs >= 0, maxTokens >= 0 else { throw ValidationError("--window, --epochs and --max-tokens must be >= 0") }
        guard rank >= 1, alpha > 0, lr > 0, lr.isFinite else { throw ValidationError("--rank >= 1, --alpha > 0 and --lr > 0 are needed") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    struct Summary: Codable {
        let chunks: Int, tokens: Int
        /// Perplexity (exp of the mean loss in nats) with the adapter trained on the chunks before, and of the base.
        let adaptedPerplexity: Double, basePerplexity: Double
        /// 1 − adapted/base perplexity.
        let perplexityReduction: Double
    }
    struct Book: Codable {
        let name: String, tokens: Int, chunks: [TempLoRAChunk], all: Summary, secondHalf: Summary
        let trainingSeconds: Double, totalSeconds: Double
        /// Tokens through the model per second in the training steps (sequence length × epochs / training seconds).
        let trainingTokensPerSecond: Double
    }
    struct Output: Codable {
        let model: String, books: [Book], all: Summary, secondHalf: Summary
        let chunk: Int, window: Int, epochs: Int, rank: Int, alpha: Double, learningRate: Double, targets: [String]
        let trainingSeconds: Double, totalSeconds: Double, threads: Int
    }

    static func summary(_ cs: [TempLoRAChunk]) -> Summary {
        let n = cs.reduce(0) { $0 + $1.tokens }
        let a = cs.reduce(0) { $0 + $1.adaptedLoss * Double($1.tokens) } / Double(max(1, n))
        let b = cs.reduce(0) { $0 + $1.baseLoss * Double($1.tokens) } / Double(max(1, n))
        return Summary(chunks: cs.count, tokens: n, adaptedPerplexity: exp(a), basePerplexity: exp(b), perplexityReduction: 1 - exp(a - b))
    }

    /// The chunks of a book's second half: those starting at or after the middle token.
    static func secondHalf(_ cs: [TempLoRAChunk], chunk: Int, tokens: Int) -> [TempLoRAChunk] {
        cs.filter { $0.index * chunk >= tokens / 2 }
    }

    func run() throws {
        let lm = try LanguageModel(path: model)
        var o = TempLoRAOptions()
        (o.chunk, o.window, o.epochs, o.rank, o.alpha, o.learningRate, o.seed, o.threads) =
            (chunk, window, epochs, rank, alpha, lr, seed, threads)
        o.targetModules = targets.split(separator: ",").map(String.init)
        try o.validate()
        if !quiet {
            print("| book | chunk | tokens | perplexity with Temp-LoRA | without | training s |")
            print("|---|---|---|---|---|---|")
        }
        var books = [Book]()
        for (name, text) in try corpusBookTexts(self.books, corpus: corpus) {
            var ids = lm.encode(text)
            if maxTokens > 0 { ids = Array(ids.prefix(maxTokens)) }
            let t0 = Date()
            var lastReport = Date()
            let chunks = try runTempLoRA(model: lm.model, tokens: ids, options: o) { c in
                if !quiet {
                    print(String(format: "| %@ | %d | %d | %.3f | %.3f | %.1f |", name, c.index, c.tokens, exp(c.adaptedLoss),
                                 exp(c.baseLoss), c.trainingSeconds))
                }
                if Date().timeIntervalSince(lastReport) > 60 || c.index == 0 {
                    stderrLine(String(format: "%@: chunk %d of %d, %.0f s so far", name, c.index + 1, (ids.count + chunk - 1) / chunk,
                                      Date().timeIntervalSince(t0)))
                    lastReport = Date()
                }
            }
            let total = Date().timeIntervalSince(t0), training = chunks.reduce(0) { $0 + $1.trainingSeconds }
            // Tokens through each training step: the chunk and its context.
            var stepTokens = 0
            for c in chunks { stepTokens += min(c.index * chunk, window) + c.tokens + 1 }
            books.append(Book(name: name, tokens: ids.count, chunks: chunks, all: Self.summary(chunks),
                              secondHalf: Self.summary(Self.secondHalf(chunks, chunk: chunk, tokens: ids.count)),
                              trainingSeconds: training, totalSeconds: total,
                              trainingTokensPerSecond: training > 0 ? Double(stepTokens * epochs) / training : 0))
        }
        let all = Self.summary(books.flatMap(\.chunks))
        let second = Self.summary(books.flatMap { Self.secondHalf($0.chunks, chunk: chunk, tokens: $0.tokens) })
        for b in books {
            print(String(format: "%@ (%d tokens), second half: perplexity %.3f with Temp-LoRA, %.3f without (%.1f%% lower); all chunks %.3f vs %.3f; %.0f s (training %.0f s, %.0f tokens/s)",
                         b.name, b.tokens, b.secondHalf.adaptedPerplexity, b.secondHalf.basePerplexity, b.secondHalf.perplexityReduction * 100,
                         b.all.adaptedPerplexity, b.all.basePerplexity, b.totalSeconds, b.trainingSeconds, b.trainingTokensPerSecond))
        }
        let training = books.reduce(0) { $0 + $1.trainingSeconds }, total = books.reduce(0) { $0 + $1.totalSeconds }
        print(String(format: "all books, second halves: %.3f with Temp-LoRA, %.3f without (%.1f%% lower); %.0f s in all",
                     second.adaptedPerplexity, second.basePerplexity, second.perplexityReduction * 100, total))
        if let json {
            try writeJSON(Output(model: model, books: books, all: all, secondHalf: second, chunk: chunk, window: window, epochs: epochs,
                                 rank: rank, alpha: alpha, learningRate: lr, targets: o.targetModules, trainingSeconds: training,
                                 totalSeconds: total, threads: threads ?? Parallel.defaultThreads), to: json)
        }
    }
}

/// `--attention exact|bigbird|sliding` and its shape: what replaces a pretrained model's attention.
struct RefitOptions: ParsableArguments {
    @Option(help: "Attention fitted into the model's layers: exact (as trained), bigbird, sliding.") var attention = "exact"
    @Option(help: "Which layers: full (those trained with full attention; a model's own sliding layers stay) or all.") var layers = "full"
    @Option(help: "BigBird block size.") var blockSize = 64
    @Option(help: "BigBird window in blocks (odd).") var windowBlocks = 3
    @Option(help: "BigBird random blocks per query block.") var randomBlocks = 2
    @Option(help: "BigBird's random plan seed.") var seed: UInt64 = 1
    @Option(help: "Sliding window W in tokens (--attention sliding).") var slidingWindow = 512

    func refit() throws -> (AttentionRefit, RefitLayers) {
        guard let which = RefitLayers(rawValue: layers) else { throw ValidationError("--layers must be full or all, got \(layers)") }
        switch attention {
        case "exact": return (.exact, which)
        case "bigbird":
            guard blockSize >= 1, windowBlocks >= 1, windowBlocks % 2 == 1, randomBlocks >= 0 else {
                throw ValidationError("BigBird needs --block-size >= 1, an odd --window-blocks >= 1 and --random-blocks >= 0")
            }
            return (.bigbird(blockSize: blockSize, windowBlocks: windowBlocks, randomBlocks: randomBlocks, seed: seed), which)
        case "sliding":
            guard slidingWindow >= 1 else { throw ValidationError("--sliding-window must be at least 1, got \(slidingWindow)") }
            return (.sliding(window: slidingWindow), which)
        default: throw ValidationError("--attention must be exact, bigbird or sliding, got \(attention)")
        }
    }

    var description: String {
        switch attention {
        case "bigbird": return "bigbird b=\(blockSize) w=\(windowBlocks) r=\(randomBlocks) g=1 (\(layers) layers)"
        case "sliding": return "sliding W=\(slidingWindow) (\(layers) layers)"
        default: return attention
        }
    }
}

struct RecipeLength: Codable {
    /// Positions `scoredFrom ..< ctx − 1` of each window are scored (all but a prefix with --score-last).
    let ctx: Int, windows: Int, scoredFrom: Int
    let perplexity: Double, secondHalfPerplexity: Double, meanLoss: Double
    /// Mean loss (nats) in each bin of positions: bin i covers positions i·(ctx−1)/bins ..< (i+1)·(ctx−1)/bins (null: none scored).
    let lossByPosition: [Double?]
    /// Seconds per window (the forward pass and the losses), and tokens per second.
    let secondsPerWindow: Double, tokensPerSecond: Double
}
struct RecipePasskeyCell: Codable { let length: Int, depth: Double, trials: Int, correct: Int, accuracy: Double, seconds: Double }

/// Perplexity by position over windows of `ids` at each of `ctx`, and passkey retrieval by
/// length × depth (teacher-forced greedy decoding of the answer), for `m` (with its refit and adapter).
func evaluateRecipe(_ m: CausalLM, lm: LanguageModel, label: String, ids: [Int32], ctx: [Int], maxWindows: Int, bins binCount: Int,
                    scoreLast: Int = 0, passkeyLengths: String, passkeyDepths: String, trials: Int,
                    threads: Int?) throws -> ([RecipeLength], [RecipePasskeyCell]) {
    var lengths = [RecipeLength]()
    for C in ctx {
        let available = ids.count / C
        guard available >= 1 else { throw ValidationError("the books hold \(ids.count) tokens: fewer than one window of \(C)") }
        let n = maxWindows == 0 ? available : min(maxWindows, available)
        let bins = min(binCount, C - 1)
        var sums = [Double](repeating: 0, count: bins), counts = [Int](repeating: 0, count: bins)
        var total = 0.0, count = 0, second = 0.0, secondCount = 0
        let t0 = Date()
        for w in 0..<n {
            // Windows spread evenly over the text.
            let start = (available == n ? w : w * available / n) * C
            var window = Array(ids[start..<(start + C)])
            if lm.addsBOS, let bos = lm.bosToken { window[0] = bos }
            let first = scoreLast > 0 ? max(0, C - 1 - scoreLast) : 0
            let losses = try m.sequenceLosses(window, from: first, threads: threads)
            for p in first..<(C - 1) {
                let l = Double(losses[p])
                guard l.isFinite else { throw ValidationError("a non-finite loss at position \(p) of window \(w)") }
                total += l; count += 1
                let b = p * bins / (C - 1)
                sums[b] += l; counts[b] += 1
                if p >= C / 2 { second += l; secondCount += 1 }
            }
            stderrLine(String(format: "ctx %d: window %d/%d, running perplexity %.3f (%.0f s)", C, w + 1, n, exp(total / Double(count)),
                              Date().timeIntervalSince(t0)))
        }
        let seconds = Date().timeIntervalSince(t0) / Double(n)
        let row = RecipeLength(ctx: C, windows: n, scoredFrom: scoreLast > 0 ? max(0, C - 1 - scoreLast) : 0,
                               perplexity: exp(total / Double(count)), secondHalfPerplexity: exp(second / Double(max(1, secondCount))),
                               meanLoss: total / Double(count), lossByPosition: zip(sums, counts).map { $1 > 0 ? $0 / Double($1) : nil },
                               secondsPerWindow: seconds, tokensPerSecond: Double(C) / seconds)
        lengths.append(row)
        print(String(format: "%@, %@, ctx %d: perplexity %.3f (second half %.3f) over %d windows, %.1f s per window (%.0f tokens/s)",
                     lm.name, label, C, row.perplexity, row.secondHalfPerplexity, n, seconds, row.tokensPerSecond))
    }
    var cells = [RecipePasskeyCell]()
    if !passkeyLengths.isEmpty {
        let depths = passkeyDepths.split(separator: ",").compactMap { Double($0) }
        var rng = SplitMix64(seed: 12345)
        for L in try parseInts(passkeyLengths, "passkey-lengths", minimum: 16) {
            for d in depths {
                var correct = 0
                let t0 = Date()
                for _ in 0..<trials {
                    let key = 1 + Int(rng.next() % UInt64(PasskeyTask.maxKey))  // Landmark's 1...50000, as `attn lm passkey`
                    // `attn lm passkey`'s prompt, leaving room for the answer's ids (teacher forcing).
                    let answer = lm.encode(" \(key)", addSpecial: false)
                    let prompt = try TokenizedPasskey.prompt(length: L - answer.count, depth: d, key: key) { lm.encode($0) }
                    let positions = (0..<answer.count).map { prompt.count - 1 + $0 }
                    let predicted = try m.greedyPredictions(prompt + answer, positions: positions, threads: threads)
                    if predicted == answer { correct += 1 }
                }
                cells.append(RecipePasskeyCell(length: L, depth: d, trials: trials, correct: correct, accuracy: Double(correct) / Double(trials),
                                               seconds: Date().timeIntervalSince(t0)))
                stderrLine(String(format: "passkey %d tokens, depth %.2f: %d/%d", L, d, correct, trials))
            }
        }
        let acc = Double(cells.reduce(0) { $0 + $1.correct }) / Double(cells.reduce(0) { $0 + $1.trials })
        print(String(format: "%@, %@: passkey accuracy %.3f over %d prompts", lm.name, label, acc, cells.reduce(0) { $0 + $1.trials }))
    }
    return (lengths, cells)
}

struct LMPretrainedSparse: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pretrained-sparse",
        abstract: "Sparse attention fitted into a pretrained model without training (BigBird, or a sliding window, in place of each full-attention layer): perplexity by position over long KJV books, seconds per window, and passkey retrieval.",
        discussion: """
            The books' text (Job, Luke, Heb by default, concatenated in that order) is tokenized once and cut into \
            consecutive windows of each --ctx (BOS first when the model adds it); every position's next-token loss is \
            kept: perplexity over all positions, over the second half (llama.cpp's ppl positions C/2+1 ... C-1), and mean \
            loss in --bins bins of position. Passkey: Landmark's prompt in the model's tokens, scored by teacher-forced \
            greedy decoding (correct when the argmax at every answer position is the answer's token), --trials keys per cell. \
            Gemma 3's sliding layers stay as trained with --layers full.
            """)
    @Option(help: "A GGUF file or a Hugging Face folder.") var model: String
    @OptionGroup var refit: RefitOptions
    @Option(help: "Comma-separated window lengths (tokens) for perplexity.") var ctx = "4096"
    @Option(help: "Windows scored per length (0: every window of the text).") var maxWindows = 1
    @Option(help: "Bins of position in the loss profile.") var bins = 16
    @Option(help: "Score only each window's last N positions (0: all); the LM head of a 262K vocabulary over 16K rows costs more than the attention.") var scoreLast = 0
    @Option(help: "KJV books (comma-separated), or long.") var books = "long"
    @Option(help: "The corpus (make corpus writes it).") var corpus = "data/kjv.txt"
    @Option(help: "Comma-separated passkey prompt lengths (empty: no passkey).") var passkeyLengths = ""
    @Option(help: "Comma-separated needle depths in [0, 1].") var passkeyDepths = "0,0.25,0.5,0.75,1"
    @Option(help: "Passkey prompts per (length, depth).") var trials = 5
    @Option(help: "Write the results as JSON here.") var json: String?
    @Option(help: "Worker threads (default: all cores).") var threads: Int?

    func validate() throws {
        _ = try refit.refit()
        _ = try parseInts(ctx, "ctx", minimum: 8)
        if !passkeyLengths.isEmpty { _ = try parseInts(passkeyLengths, "passkey-lengths", minimum: 16) }
        let ds = passkeyDepths.split(separator: ",").compactMap { Double($0) }
        guard ds.count == passkeyDepths.split(separator: ",").count, !ds.isEmpty, ds.allSatisfy({ (0...1).contains($0) }) else {
            throw ValidationError("--passkey-depths must be comma-separated numbers in [0, 1]")
        }
        guard maxWindows >= 0, bins >= 1, trials >= 1, scoreLast >= 0 else { throw ValidationError("--max-windows >= 0, --bins >= 1, --trials >= 1 and --score-last >= 0 are needed") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    typealias Length = RecipeLength
    typealias PasskeyCell = RecipePasskeyCell
    struct Output: Codable {
        let model: String, attention: String, layers: String, refitLayers: [Int], books: [String], textTokens: Int
        let lengths: [Length], passkey: [PasskeyCell], passkeyAccuracy: Double?, passkeySeconds: Double, threads: Int
    }

    func run() throws {
        let (r, which) = try refit.refit()
        let lm = try LanguageModel(path: model)
        let base = lm.model
        let m = try base.refitting(r, layers: which)
        let changed = (0..<m.config.layers).filter { m.config.attention[$0] != base.config.attention[$0] || m.config.window(of: $0) != base.config.window(of: $0) }
        stderrLine("\(model): \(refit.description); layers changed: \(changed.isEmpty ? "none" : changed.map(String.init).joined(separator: ","))")
        let texts = try corpusBookTexts(books, corpus: corpus)
        let ids = lm.encode(texts.map(\.text).joined())
        let (lengths, cells) = try evaluateRecipe(m, lm: lm, label: refit.description, ids: ids, ctx: try parseInts(ctx, "ctx", minimum: 8),
                                                  maxWindows: maxWindows, bins: bins, scoreLast: scoreLast, passkeyLengths: passkeyLengths,
                                                  passkeyDepths: passkeyDepths, trials: trials, threads: threads)
        let passkeySeconds = cells.reduce(0) { $0 + $1.seconds }
        let accuracy = cells.isEmpty ? nil : Double(cells.reduce(0) { $0 + $1.correct }) / Double(cells.reduce(0) { $0 + $1.trials })
        if let json {
            try writeJSON(Output(model: model, attention: refit.description, layers: refit.layers, refitLayers: changed,
                                 books: texts.map(\.name), textTokens: ids.count, lengths: lengths, passkey: cells,
                                 passkeyAccuracy: accuracy, passkeySeconds: passkeySeconds, threads: threads ?? Parallel.defaultThreads), to: json)
        }
    }
}

struct LMPretrainedInfini: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pretrained-infini",
        abstract: "Infini-Attention fitted into a pretrained model's full-attention layers: gates β start so that attention is local, a LoRA + β fine-tune on the KJV's training books (bounded in steps and minutes), then perplexity by position and passkey as pretrained-sparse measures them.",
        discussion: """
            Training sequences are consecutive --train-length token spans of the training books (the held-out books \
            Job, Luke, Heb and the validation books are never read), several segments each, so that the memory is \
            written and read. The adapter (unmerged, on the quantised weights) learns at --lr, the gates β at --beta-lr \
            (AdamW, no weight decay). The model is changed in memory only.
            """)
    @Option(help: "A GGUF file or a Hugging Face folder.") var model: String
    @Option(help: "Infini segment length S.") var segment = 1024
    @Option(help: "Memory update: linear or delta.") var update = "linear"
    @Option(help: "Initial gate logit β of every head (sigmoid(β) is the memory's share).") var betaInit: Float = -4
    @Option(help: "Tokens per training sequence.") var trainLength = 2048
    @Option(help: "Fine-tune steps at most (0: evaluate the fitted model untrained).") var steps = 60
    @Option(help: "Stop the fine-tune after this many minutes.") var minutes = 30.0
    @Option(help: "LoRA rank.") var rank = 8
    @Option(help: "lora_alpha.") var alpha = 16.0
    @Option(help: "Comma-separated LoRA target modules.") var targets = "q_proj,k_proj,v_proj,o_proj"
    @Option(help: "The adapter's learning rate.") var lr = 1e-4
    @Option(help: "The gates' learning rate.") var betaLr = 3e-2
    @Option(help: "Seed of the adapter.") var seed: UInt64 = 1
    @Option(help: "The corpus (make corpus writes it).") var corpus = "data/kjv.txt"
    @Option(help: "Comma-separated window lengths (tokens) for perplexity.") var ctx = "16384"
    @Option(help: "Windows scored per length (0: every window of the text).") var maxWindows = 1
    @Option(help: "Bins of position in the loss profile.") var bins = 16
    @Option(help: "Score only each window's last N positions (0: all).") var scoreLast = 0
    @Option(help: "KJV books to evaluate on (comma-separated), or long.") var books = "long"
    @Option(help: "Comma-separated passkey prompt lengths (empty: no passkey).") var passkeyLengths = ""
    @Option(help: "Comma-separated needle depths in [0, 1].") var passkeyDepths = "0,0.25,0.5,0.75,1"
    @Option(help: "Passkey prompts per (length, depth).") var trials = 5
    @Option(help: "Write the results as JSON here.") var json: String?
    @Option(help: "Worker threads (default: all cores).") var threads: Int?

    func validate() throws {
        guard segment >= 1 else { throw ValidationError("--segment must be at least 1, got \(segment)") }
        guard InfiniAttention.Update(rawValue: update) != nil else { throw ValidationError("--update must be linear or delta, got \(update)") }
        guard betaInit.isFinite else { throw ValidationError("--beta-init must be finite") }
        guard trainLength >= 2, steps >= 0, minutes > 0, rank >= 1, alpha > 0, lr > 0, betaLr >= 0 else {
            throw ValidationError("--train-length >= 2, --steps >= 0, --minutes > 0, --rank >= 1, --alpha > 0, --lr > 0 and --beta-lr >= 0 are needed")
        }
        _ = try parseInts(ctx, "ctx", minimum: 8)
        if !passkeyLengths.isEmpty { _ = try parseInts(passkeyLengths, "passkey-lengths", minimum: 16) }
        guard maxWindows >= 0, bins >= 1, trials >= 1, scoreLast >= 0 else { throw ValidationError("--max-windows >= 0, --bins >= 1, --trials >= 1 and --score-last >= 0 are needed") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    struct Output: Codable {
        let model: String, segment: Int, update: String, betaInit: Float, refitLayers: [Int]
        let steps: Int, trainLength: Int, trainTokens: Int, trainMinutes: Double, trainLoss: [Double]
        /// Mean sigmoid(β) (the memory's share) per refitted layer after the fine-tune.
        let memoryShare: [Double]
        let rank: Int, alpha: Double, learningRate: Double, betaLearningRate: Double, targets: [String]
        let books: [String], lengths: [RecipeLength], passkey: [RecipePasskeyCell], passkeyAccuracy: Double?, threads: Int
    }

    func run() throws {
        let lm = try LanguageModel(path: model)
        let refit = AttentionRefit.infini(segment: segment, update: InfiniAttention.Update(rawValue: update)!, beta: betaInit)
        let fitted = try lm.model.refitting(refit, layers: .full)
        let changed = (0..<fitted.config.layers).filter { fitted.config.attention[$0] != lm.model.config.attention[$0] }
        let modules = targets.split(separator: ",").map(String.init)
        let adapter = try LoRAAdapter(model: fitted, rank: rank, alpha: alpha, targetModules: modules, seed: seed)
        let m = try fitted.attaching(adapter)
        let optimizer = try AdamW(parameters: adapter.parameters, beta2: 0.999, weightDecay: 0)
        let gates = try AdamW(parameters: m.parameters, beta2: 0.999, weightDecay: 0)
        let grads = try ParameterSet(zerosLike: m.parameters)
        let betaNames = changed.map { "model.layers.\($0).self_attn.infini_beta" }
        // Training tokens: the training books in order, as many as the steps read.
        var ids = [Int32]()
        if steps > 0 {
            for d in try TextCorpus(path: corpus).training where ids.count < steps * trainLength + 1 {
                ids += lm.encode(d.text, addSpecial: ids.isEmpty)
            }
        }
        var losses = [Double](), done = 0
        let t0 = Date()
        while done < steps, Date().timeIntervalSince(t0) < minutes * 60 {
            let span = ids.count / trainLength
            guard span >= 1 else { throw ValidationError("the training books hold fewer than \(trainLength) tokens") }
            let s = (done % span) * trainLength
            grads.zero()
            m.lora!.gradients.zero()
            let r = try m.loss(tokens: Array(ids[s..<(s + trainLength)]), batch: 1, length: trainLength, gradients: grads, threads: threads)
            try optimizer.update(adapter.parameters, gradients: m.lora!.gradients, lr: Float(lr))
            if betaLr > 0 {
                // Only the gates move: every other float32 parameter's gradient is dropped (Adam then leaves it as it is).
                for e in grads.entries where !betaNames.contains(e.name) { (grads.scalars + e.offset).update(repeating: 0, count: e.count) }
                try gates.update(m.parameters, gradients: grads, lr: Float(betaLr))
            }
            losses.append(r.loss)
            done += 1
            stderrLine(String(format: "infini fine-tune step %d/%d: loss %.4f (%.0f s)", done, steps, r.loss, Date().timeIntervalSince(t0)))
        }
        let trainMinutes = Date().timeIntervalSince(t0) / 60
        let share = betaNames.map { name -> Double in
            let p = m.parameters.pointer(name), H = m.config.heads
            return (0..<H).reduce(0.0) { $0 + 1 / (1 + exp(-Double(p[$1]))) } / Double(H)
        }
        let texts = try corpusBookTexts(books, corpus: corpus)
        let evalIds = lm.encode(texts.map(\.text).joined())
        let label = "infini S=\(segment) \(update) after \(done) steps"
        let (lengths, cells) = try evaluateRecipe(m, lm: lm, label: label, ids: evalIds, ctx: try parseInts(ctx, "ctx", minimum: 8),
                                                  maxWindows: maxWindows, bins: bins, scoreLast: scoreLast, passkeyLengths: passkeyLengths,
                                                  passkeyDepths: passkeyDepths, trials: trials, threads: threads)
        let accuracy = cells.isEmpty ? nil : Double(cells.reduce(0) { $0 + $1.correct }) / Double(cells.reduce(0) { $0 + $1.trials })
        if let json {
            try writeJSON(Output(model: model, segment: segment, update: update, betaInit: betaInit, refitLayers: changed, steps: done,
                                 trainLength: trainLength, trainTokens: done * trainLength, trainMinutes: trainMinutes, trainLoss: losses,
                                 memoryShare: share, rank: rank, alpha: alpha, learningRate: lr, betaLearningRate: betaLr, targets: modules,
                                 books: texts.map(\.name), lengths: lengths, passkey: cells, passkeyAccuracy: accuracy,
                                 threads: threads ?? Parallel.defaultThreads), to: json)
        }
    }
}
