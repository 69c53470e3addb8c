import ArgumentParser
import ChatTemplate
import AttentionTensor
import Foundation
import LongAttention
import LongContextModel

/// `attn lm …`: the language-model layer (SPEC.md § Language models).
struct LM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lm",
        abstract: "Language models in Hugging Face's format: evaluate, train, generate, Temp-LoRA.",
        subcommands: [LMInit.self, LMEval.self, LMTrain.self, LMGenerate.self, LMTokenize.self, LMPerplexity.self,
                      LMLoRAInit.self, LMTempLoRA.self, LMProfile.self, LMPasskey.self] + pretrainedRecipeCommands)
}

/// Token ids `[B, T]` from an int32/int64 .npy (a 1-D array is one sequence).
func readTokens(_ path: String) throws -> (tokens: [Int32], batch: Int, length: Int) {
    let (shape, values) = try Numpy.readIntegers(path)
    guard shape.count == 1 || shape.count == 2 else {
        throw ModelError.invalidTokenFile(file: path, shape: shape)
    }
    let (B, T) = shape.count == 2 ? (shape[0], shape[1]) : (1, shape[0])
    guard B >= 1, T >= 1 else { throw ModelError.invalidTokenFile(file: path, shape: shape) }
    // Ids that do not fit Int32 (those that do are checked against the model's vocabulary later).
    if let bad = values.firstIndex(where: { $0 < Int(Int32.min) || $0 > Int(Int32.max) }) {
        throw ModelError.tokenOutOfRange(token: values[bad], sequence: bad / T, position: bad % T, vocabulary: Int(Int32.max))
    }
    return (values.map { Int32($0) }, B, T)
}

/// The shape of a new model, shared by `lm init` and `lm train`.
struct ModelShapeOptions: ParsableArguments {
    @Option(help: "New model: vocabulary size (default: bytes and three special ids).") var vocab = ByteTokenizer.vocabSize
    @Option(help: "New model: layers.") var layers = 4
    @Option(help: "New model: hidden size D.") var hidden = 256
    @Option(help: "New model: query heads H.") var heads = 8
    @Option(help: "New model: key/value heads Hkv.") var kvHeads = 4
    @Option(help: "New model: SwiGLU intermediate size F.") var intermediate = 704
    @Option(help: "New model: positions, rope or alibi.") var positions = "rope"
    @Option(help: "New model: RoPE base θ.") var ropeTheta = 10000.0
    @Option(help: "New model: Mixtral experts per layer (0: a dense Llama MLP).") var experts = 0
    @Option(help: "New model: experts per token (Mixtral's top-k).") var expertsPerToken = 2
    @Flag(help: "New model: tie the LM head to the embedding.") var tied = false
    @Option(help: "New model: max_position_embeddings.") var maxPositions = 2048

    func config() throws -> ModelConfig {
        guard ["rope", "alibi"].contains(positions) else { throw ValidationError("--positions must be rope or alibi") }
        let bytes = vocab >= ByteTokenizer.vocabSize
        return try ModelConfig(architecture: experts > 0 ? .mixtral : .llama, vocabSize: vocab, hiddenSize: hidden,
                               intermediateSize: intermediate, layers: layers, heads: heads, kvHeads: kvHeads, rmsNormEps: 1e-5,
                               positions: positions == "alibi" ? .alibi : .rope(theta: ropeTheta, scaling: .none),
                               tieWordEmbeddings: tied, maxPositionEmbeddings: maxPositions,
                               bosTokenId: bytes ? Int(ByteTokenizer.bos) : nil, eosTokenId: bytes ? Int(ByteTokenizer.eos) : nil,
                               experts: experts, expertsPerToken: expertsPerToken)
    }
}

struct LMInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Write a freshly initialised checkpoint (config.json + model.safetensors, transformers' names).")
    @Option(help: "Output checkpoint directory.") var out: String
    @OptionGroup var shape: ModelShapeOptions
    @Option(help: "Initialisation seed.") var seed: UInt64 = 1

    func run() throws {
        let model = try CausalLM(config: try shape.config(), seed: seed)
        try model.save(to: out)
        print("\(out): \(model.parameters.count) parameters")
    }
}

struct LMEval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Logits, mean next-token loss and gradients of a checkpoint (optionally with a PEFT LoRA adapter) on tokens [B, T].")
    @Option(help: "A GGUF file, or a checkpoint directory (config.json + safetensors, transformers' names).")
    var model: String
    @Option(help: "exact: multiply by the dequantised weights in float32; fast: 8-bit integer kernels on the quantised blocks, each sequence going through a KV cache 16 tokens at a time as decoding computes it (--logits and --loss; --grads takes the exact path).")
    var matmul = "exact"
    @Option(help: "PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).")
    var adapter: String?
    @Option(help: QuantizeOption.help)
    var quantize: String?
    @Option(help: "Token ids, int32/int64 .npy [B, T].")
    var tokens: String
    @Option(help: "Output: logits float32 .npy [B, T, V] ([B, K, V] with --last K).")
    var logits: String?
    @Option(help: "Only the last K positions, as generation computes them: the first T - K tokens prefilled through a KV cache, the last K decoded one at a time (--logits [B, K, V]; --loss over their K - 1 next tokens). For inputs whose [B, T, V] logits would not fit.")
    var last: Int?
    @Option(help: "Output: the mean next-token cross-entropy, a 0-d float32 .npy.")
    var loss: String?
    @Option(help: "Output: the loss's gradient of every parameter under transformers' parameter names (Mixtral: experts fused as gate_up_proj/down_proj); with --adapter: of the adapter's A and B, PEFT's names. Safetensors.")
    var grads: String?
    @Option(help: "Worker threads (default: all cores).")
    var threads: Int?

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        let outs = [logits, loss, grads].compactMap { $0 }
        if outs.isEmpty { throw ValidationError("nothing to compute: give --logits, --loss or --grads") }
        if Set(outs).count != outs.count { throw ValidationError("output files must differ") }
        if let last {
            if last < 1 { throw ValidationError("--last must be at least 1") }
            if grads != nil { throw ValidationError("--last computes logits and loss only, not --grads") }
            if loss != nil, last < 2 { throw ValidationError("--loss with --last needs K >= 2 (the loss is over the K - 1 next tokens)") }
        }
        try MatmulOption.check(matmul)
        _ = try QuantizeOption.type(quantize)
    }

    func run() throws {
        let base = try loadCausalLM(model, matmul: MatmulOption.mode(matmul), quantize: try QuantizeOption.type(quantize))
        if grads != nil, !base.frozen.isEmpty, adapter == nil {
            throw ValidationError("\(model): a GGUF model's weight matrices are frozen (quantised, read in place): --grads needs a checkpoint directory")
        }
        let (ids, B, T) = try readTokens(tokens)
        let lora = try adapter.map { try LoRAAdapter(directory: $0, model: base) }
        let net = try lora.map { try $0.mergedModel(base) } ?? base
        let g = grads != nil ? try ParameterSet(zerosLike: net.parameters) : nil
        if let last {
            try evaluateLast(net, ids: ids, batch: B, length: T, last: last)
            return
        }
        if net.matmul == .fast, g == nil {
            // Every product on the integer kernels: each sequence decoded 16 tokens at a time.
            let V = net.config.vocabSize
            var all = try Tensor(uninitialized: [B, T, V])
            var total = 0.0
            for b in 0..<B {
                let seq = Array(ids[(b * T)..<((b + 1) * T)])
                let z = try net.stepwiseLogits(tokens: seq, threads: threads)
                all.unsafeMutableBaseAddress().advanced(by: b * T * V).update(from: z.unsafeBaseAddress, count: T * V)
                for j in 0..<(T - 1) {
                    guard let l = CausalLM.tokenLoss(z.unsafeBaseAddress + j * V, vocab: V, target: Int(seq[j + 1])) else {
                        throw ModelError.nonFiniteLogitsAt(sequence: b, position: j)
                    }
                    total += l
                }
            }
            if let logits { try Numpy.write(all, to: logits) }
            if let loss { try Numpy.write(try Tensor(shape: [], scalars: [Float(total / Double(max(1, B * (T - 1))))]), to: loss) }
            return
        }
        let result = try net.loss(tokens: ids, batch: B, length: T, gradients: g, keepLogits: logits != nil, threads: threads)
        // Everything is computed before the first file is written.
        var named: [(name: String, tensor: Tensor)]? = nil
        if let g {
            if let lora {
                let ga = try ParameterSet(zerosLike: lora.parameters)
                lora.gradients(fromMerged: g, into: ga)
                named = try ga.namedTensors()
            } else {
                // transformers' parameter names (Mixtral's experts fused, as its models hold them).
                named = try net.transformersParameterLayout(g)
            }
            guard named!.allSatisfy({ $0.tensor.scanValues().invalidIndex == nil }) else {
                throw ModelError.nonFiniteGradient(step: nil)
            }
        }
        if let logits, let l = result.logits { try Numpy.write(l, to: logits) }
        if let loss { try Numpy.write(try Tensor(shape: [], scalars: [Float(result.loss)]), to: loss) }
        if let grads, let named { try SafeTensors.write(named, to: grads) }
    }
}

extension LMEval {
    /// `--last K`: each sequence prefilled to T - K tokens, then its last K tokens decoded one at a
    /// time, so the logits are those greedy generation would see when teacher-forced on the tail.
    func evaluateLast(_ net: CausalLM, ids: [Int32], batch B: Int, length T: Int, last K: Int) throws {
        guard K <= T else { throw ValidationError("--last \(K) exceeds the \(T) tokens of each sequence") }
        guard net.config.attention.allSatisfy({ $0 == .exact }) else {
            throw ValidationError("--last decodes through a KV cache: every layer must use exact attention")
        }
        let V = net.config.vocabSize
        var all = try Tensor(uninitialized: [B, K, V])
        var total = 0.0
        for b in 0..<B {
            let seq = Array(ids[(b * T)..<((b + 1) * T)])
            var cache = try net.makeCache(positions: T, chunk: CausalLM.prefillChunk)
            if T > K { _ = try net.step(Array(seq[..<(T - K)]), cache: &cache, threads: threads) }
            for j in 0..<K {
                let z = try net.step([seq[T - K + j]], cache: &cache, threads: threads)
                let row = all.unsafeMutableBaseAddress() + (b * K + j) * V
                z.withUnsafeBufferPointer { row.update(from: $0.baseAddress!, count: V) }
                if j + 1 < K {
                    guard let l = CausalLM.tokenLoss(row, vocab: V, target: Int(seq[T - K + j + 1])) else {
                        throw ModelError.nonFiniteLogitsAt(sequence: b, position: T - K + j)
                    }
                    total += l
                }
            }
        }
        if let logits { try Numpy.write(all, to: logits) }
        if let loss { try Numpy.write(try Tensor(shape: [], scalars: [Float(total / Double(max(1, B * (K - 1))))]), to: loss) }
    }
}

struct LMTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a byte-level model on the corpus (make corpus): a new model, a checkpoint to fine-tune (--from), or a run to resume (--resume).",
        discussion: "Checkpoints (config.json, model.safetensors, optimizer.safetensors, trainer_state.json) go to --out every --checkpoint-every steps, at the end and on Ctrl-C; they load in transformers.")
    @Option(help: "Output directory for checkpoints.")
    var out: String
    @Option(help: "The corpus: bible's output (make corpus writes data/kjv.txt).")
    var corpus = "data/kjv.txt"
    @Option(help: "Start from this checkpoint (fine-tuning) instead of a new model.")
    var from: String?
    @Flag(help: "Resume the run in --out (model, optimizer and step).")
    var resume = false
    @OptionGroup var shape: ModelShapeOptions
    @OptionGroup var variant: ModelVariantOptions
    @Option(help: "Sequences per micro-batch.") var batch = 8
    @Option(help: "Tokens per sequence (the training window).") var length = 256
    @Option(help: "Micro-batches per step (gradient accumulation).") var accumulation = 1
    @Option(help: "Optimizer steps.") var steps = 1000
    @Option(help: "Peak learning rate.") var lr = 3e-3
    @Option(help: "Warm-up steps.") var warmup = 50
    @Option(help: "Global gradient-norm clip (0: none).") var clip = 1.0
    @Option(help: "AdamW weight decay.") var weightDecay: Float = 0.1
    @Option(help: "Infini's gates β learn at --lr times this (a gate must move by units, Adam moves it by about lr per step).")
    var gateLrMultiplier: Float = 1
    @Option(help: "Data order and initialisation seed.") var seed: UInt64 = 1
    @Option(help: "Checkpoint interval in steps.") var checkpointEvery = 100
    @Option(help: "Validation interval in steps (0: never).") var evalEvery = 100
    @Option(help: "Worker threads (default: all cores).") var threads: Int?

    func options() -> TrainingOptions {
        var o = TrainingOptions()
        (o.batch, o.length, o.accumulation, o.steps) = (batch, length, accumulation, steps)
        (o.learningRate, o.warmupSteps, o.clipNorm, o.weightDecay) = (lr, warmup, clip, weightDecay)
        o.gateLearningRateMultiplier = gateLrMultiplier
        (o.seed, o.checkpointEvery, o.evalEvery, o.threads) = (seed, checkpointEvery, evalEvery, threads)
        return o
    }

    func run() throws {
        try options().validate()
        let text = try TextCorpus(path: corpus)
        let model: CausalLM
        if resume {
            model = try CausalLM(directory: out)
        } else if let from {
            let base = try CausalLM(directory: from)
            model = try CausalLM(config: try adjusted(base.config), parameters: try carry(base))
        } else {
            var config = try shape.config()
            config.maxPositionEmbeddings = max(config.maxPositionEmbeddings, length)
            model = try CausalLM(config: try adjusted(config), seed: seed)
        }
        let trainer = try Trainer(model: model, options: options(), train: TextCorpus.tokens(text.training),
                                  validation: TextCorpus.tokens(text.validation), directory: out)
        if resume { try trainer.resume() }
        let params = model.parameters.count
        FileHandle.standardError.write("training \(params) parameters (\(model.config.layers) layers, D = \(model.config.hiddenSize)) from step \(trainer.step) to \(steps); \(batch)×\(length)×\(accumulation) tokens per step\n".data(using: .utf8)!)
        // The curve, one row per step (appended across resumed runs): step, loss, learning rate, validation.
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let logPath = out + "/training_log.csv"
        if !FileManager.default.fileExists(atPath: logPath) {
            FileManager.default.createFile(atPath: logPath, contents: Data("step,loss,learning_rate,gradient_norm,validation_loss\n".utf8))
        }
        let log = FileHandle(forWritingAtPath: logPath)
        log?.seekToEndOfFile()
        defer { try? log?.close() }
        let finished = try trainer.run { p in
            log?.write(Data(String(format: "%d,%.6f,%.6g,%.4f,%@\n", p.step, p.loss, p.learningRate, p.gradientNorm,
                                   p.validationLoss.map { String(format: "%.6f", $0) } ?? "").utf8))
            var line = String(format: "step %d/%d  loss %.4f (%.3f bits/byte)  lr %.2e  |g| %.2f  %.0f tokens/s  %@ left",
                              p.step, p.steps, p.loss, p.loss / M_LN2, p.learningRate, p.gradientNorm, p.tokensPerSecond,
                              formatDuration(p.secondsLeft))
            if let v = p.validationLoss { line += String(format: "  validation %.4f (%.3f bits/byte)", v, v / M_LN2) }
            FileHandle.standardError.write((line + "\n").data(using: .utf8)!)
        }
        if !finished { FileHandle.standardError.write("interrupted: checkpoint saved at step \(trainer.step) in \(out)\n".data(using: .utf8)!) }
    }

    /// The config with this run's attention variant, RoPE scaling and window applied.
    func adjusted(_ c: ModelConfig) throws -> ModelConfig { try variant.apply(to: c, length: length, seed: seed) }

    /// The base's weights in the adjusted layout (new Infini gates start at 0).
    func carry(_ base: CausalLM) throws -> ParameterSet { try variant.carry(base, into: try adjusted(base.config)) }
}

func formatDuration(_ s: Double) -> String {
    guard s.isFinite else { return "?" }
    let t = Int(s.rounded())
    return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t / 60 % 60) : String(format: "%dm%02ds", t / 60, t % 60)
}

struct LMGenerate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Continue a prompt (or answer it in the model's chat template): prefill, then decoding through the KV cache, text streamed to stdout.",
        discussion: "Stops at any of the model's end tokens (eos_token_id lists, <|im_end|>, <end_of_turn>, ...), a --stop string or --max-tokens. Control tokens written in the prompt are single ids.")
    @OptionGroup var arguments: GenerateArguments

    func run() throws {
        let lm = try arguments.load()
        try arguments.generate(lm, source: nil, writes: true)
    }
}

/// The options of `attn lm generate`, shared with `attn dist generate` (same flags, same outputs).
public struct GenerateArguments: ParsableArguments {
    public init() {}
    @Option(help: "A GGUF file, or a checkpoint directory.") public var model: String
    @Option(help: "The prompt, taken verbatim.") public var prompt: String?
    @Option(help: "A UTF-8 file holding the prompt, taken verbatim (instead of --prompt).") public var promptFile: String?
    @Flag(help: "Render the prompt as a user message through the model's chat template (with the generation prompt).") public var chat = false
    @Option(help: "A system message for --chat.") public var system: String?
    @Option(help: "Tokens to generate at most.") public var maxTokens = 200
    @Option(help: "0: greedy; otherwise the sampling temperature.") public var temperature = 0.0
    @Option(help: "Sample among the k most likely tokens (0: all).") public var topK = 0
    @Option(help: "Sample among the most likely tokens up to probability p.") public var topP = 1.0
    @Option(help: "Drop tokens less likely than min-p times the most likely one.") public var minP = 0.0
    @Option(help: "Repetition penalty on tokens already in the context (1: off).") public var repeatPenalty = 1.0
    @Option(help: "Stop when this text appears (repeatable; not printed).") public var stop: [String] = []
    @Option(help: "Sampling seed.") public var seed: UInt64 = 0
    @Option(help: "KV cache storage: f32, bf16, f16, int8.") public var kvType = "f32"
    @Option(help: "fast (8-bit integer kernels on the quantised blocks for decoding steps) or exact (float32 products of the dequantised weights).") public var matmul = "fast"
    @Option(help: QuantizeOption.help) public var quantize: String?
    @Option(help: "Output: the generated ids (not the prompt's, not the end token), int32 .npy.") public var tokensOut: String?
    @Option(help: "Output: the logits of every chosen token, float32 .npy [steps, V] (the prompt's last position first).") public var logitsOut: String?
    @Option(help: "Output: the run's timings as JSON (prompt and generated tokens, prefill and decode seconds, KV cache bytes).") public var timingsOut: String?
    @Flag(help: "Print the prompt before the continuation.") public var echo = false
    @Option(help: "Worker threads (default: all cores).") public var threads: Int?

    public func validate() throws {
        try MatmulOption.check(matmul)
        _ = try QuantizeOption.type(quantize)
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be >= 0") }
        guard (prompt == nil) != (promptFile == nil) else { throw ValidationError("give exactly one of --prompt and --prompt-file") }
        if system != nil && !chat { throw ValidationError("--system needs --chat") }
        guard KVCacheType(rawValue: kvType) != nil else { throw ValidationError("--kv-type must be f32, bf16, f16 or int8") }
    }

    public var cacheType: KVCacheType { KVCacheType(rawValue: kvType) ?? .float32 }

    /// The model, under `--matmul`.
    public func load() throws -> LanguageModel {
        try LanguageModel(path: model, matmul: MatmulOption.mode(matmul), quantize: try QuantizeOption.type(quantize))
    }

    /// The prompt (`--prompt` or `--prompt-file`), through the chat template with `--chat`.
    public func promptText(_ lm: LanguageModel) throws -> String {
        let raw = try readText(text: prompt, file: promptFile)
        guard chat else { return raw }
        var messages = [ChatMessage]()
        if let system { messages.append(ChatMessage(role: "system", content: system)) }
        messages.append(ChatMessage(role: "user", content: raw))
        return try lm.chatPrompt(messages)
    }

    public var options: GenerationOptions {
        GenerationOptions(
            maxTokens: maxTokens,
            sampling: SamplingOptions(temperature: temperature, topK: topK, topP: topP, minP: minP, repetitionPenalty: repeatPenalty,
                                      seed: seed),
            stop: stop, cacheType: cacheType, threads: threads)
    }

    /// What a run measured, for `--timings-out` (`prefillSeconds`: up to the first token's logits).
    public struct Timings: Codable {
        public var promptTokens = 0, generatedTokens = 0
        public var prefillSeconds = 0.0, decodeSeconds = 0.0, seconds = 0.0
        public var prefillTokensPerSecond = 0.0, decodeTokensPerSecond = 0.0
        public var kvCacheBytes = 0
        public var ranks = 1, threads = 1
        /// The model's shape (what a benchmark needs to count FLOPs): layers, D, H, Hkv, hd, F, V,
        /// sliding layers and their window (0 without).
        public var layers = 0, hiddenSize = 0, heads = 0, kvHeads = 0, headDim = 0, intermediateSize = 0, vocabSize = 0
        public var slidingLayers = 0, window = 0
        public var matmul = ""
    }

    /// Generates with `source` (nil: this process's KV cache) and, when `writes`, streams the text
    /// to stdout, writes the output files and the summary line (a distributed run: rank 0 only).
    /// `cacheBytes` reports the KV cache's bytes after the run (`--timings-out`). Returns the timings.
    @discardableResult
    public func generate(_ lm: LanguageModel, source: LogitSource?, writes: Bool, ranks: Int = 1,
                         cacheBytes: (() -> Int)? = nil) throws -> Timings {
        let text = try promptText(lm)
        let options = self.options
        try options.sampling.validate()
        let base = source ?? CachedDecoding(model: lm.model, cacheType: options.cacheType, threads: options.threads)
        let timed = TimedLogits(base)
        let recorder = logitsOut == nil ? nil : RecordingLogits(timed)
        if echo && writes { FileHandle.standardOutput.write(Data(try readText(text: prompt, file: promptFile).utf8)) }
        let start = Date()
        let result = try lm.generate(text, options: options, source: lm.model.decodesThroughCache || source != nil ? (recorder.map { $0 as LogitSource } ?? timed) : nil) { piece in
            if writes { FileHandle.standardOutput.write(Data(piece.utf8)) }
            return true
        }
        let seconds = Date().timeIntervalSince(start)
        var t = Timings()
        t.promptTokens = result.promptTokens
        t.generatedTokens = result.tokens.count
        (t.prefillSeconds, t.decodeSeconds, t.seconds) = (timed.prefillSeconds, timed.stepSeconds, seconds)
        t.prefillTokensPerSecond = Double(result.promptTokens) / max(timed.prefillSeconds, 1e-9)
        t.decodeTokensPerSecond = Double(timed.steps) / max(timed.stepSeconds, 1e-9)
        t.kvCacheBytes = cacheBytes?() ?? (base as? CachedDecoding)?.cache?.bytes ?? 0
        t.ranks = ranks
        t.threads = options.threads ?? Parallel.defaultThreads
        let c = lm.model.config
        (t.layers, t.hiddenSize, t.heads, t.kvHeads, t.headDim) = (c.layers, c.hiddenSize, c.heads, c.kvHeads, c.headDim)
        (t.intermediateSize, t.vocabSize) = (c.intermediateSize, c.vocabSize)
        let windows = (0..<c.layers).compactMap { c.window(of: $0) }
        (t.slidingLayers, t.window) = (windows.count, windows.max() ?? 0)
        t.matmul = matmul
        guard writes else { return t }
        FileHandle.standardOutput.write(Data("\n".utf8))
        if let tokensOut { try Numpy.write(int32: result.tokens, shape: [result.tokens.count], to: tokensOut) }
        if let logitsOut, let recorder {
            let V = lm.model.config.vocabSize
            try Numpy.write(try Tensor(shape: [recorder.rows.count, V], scalars: recorder.rows.flatMap { $0 }), to: logitsOut)
        }
        if let timingsOut {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            try writeFileAtomically(try enc.encode(t), to: timingsOut)
        }
        FileHandle.standardError.write(String(format: "%d prompt tokens, %d generated in %.2f s (%.1f tokens/s, prefill included; %@)\n",
                                              result.promptTokens, result.tokens.count, seconds,
                                              Double(result.tokens.count) / max(seconds, 1e-9), result.finishReason).data(using: .utf8)!)
        return t
    }
}

/// Times a ``LogitSource``'s prefill and steps.
final class TimedLogits: LogitSource {
    let inner: LogitSource
    var prefillSeconds = 0.0, stepSeconds = 0.0, steps = 0
    init(_ inner: LogitSource) { self.inner = inner }
    func prefill(_ prompt: [Int32], maxTokens: Int) throws -> [Float] {
        let t = Date()
        defer { prefillSeconds += Date().timeIntervalSince(t) }
        return try inner.prefill(prompt, maxTokens: maxTokens)
    }
    func next(_ token: Int32) throws -> [Float] {
        let t = Date()
        defer { stepSeconds += Date().timeIntervalSince(t); steps += 1 }
        return try inner.next(token)
    }
}

struct LMLoRAInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lora-init",
        abstract: "Write a new LoRA adapter for a checkpoint in PEFT's format (adapter_config.json + adapter_model.safetensors).")
    @Option(help: "Base checkpoint directory, or a GGUF file (its adapter is applied unmerged: attn-server --adapter).") var model: String
    @Option(help: "Output adapter directory.") var out: String
    @Option(help: "Rank r.") var rank = 8
    @Option(help: "lora_alpha (the update is scaled by alpha / r).") var alpha = 16.0
    @Option(help: "Comma-separated target modules (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj).")
    var targets = "q_proj,v_proj"
    @Flag(help: "Draw B at random too (PEFT's init_lora_weights=False), so the adapter changes the model: for interoperability checks.")
    var randomB = false
    @Option(help: "Seed.") var seed: UInt64 = 1

    func run() throws {
        var isDirectory: ObjCBool = false
        let file = FileManager.default.fileExists(atPath: model, isDirectory: &isDirectory) && !isDirectory.boolValue
        let base = file ? try CausalLM(gguf: model) : try CausalLM(directory: model)
        let adapter = try LoRAAdapter(model: base, rank: rank, alpha: alpha,
                                      targetModules: targets.split(separator: ",").map(String.init), seed: seed)
        if randomB {
            var rng = SplitMix64(seed: seed &+ 1)
            for e in adapter.parameters.entries where e.name.hasSuffix("lora_B.weight") {
                let p = adapter.parameters.scalars + e.offset
                for i in 0..<e.count { p[i] = Float((2 * rng.nextUnitOpen() - 1) * 0.1) }
            }
        }
        try adapter.save(to: out, baseModel: model)
        print("\(out): \(adapter.parameters.count) adapter parameters on \(adapter.adaptedWeights.count) projections")
    }
}

struct LMTempLoRA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "temp-lora",
        abstract: "Temp-LoRA (Wang et al. 2024) over a long text: score each chunk with the adapter trained on the chunks before it, then train on it; reports bits per byte with and without.",
        discussion: "Each text gets a fresh adapter; the base never changes. With --epochs 0 it scores the base alone at the window.")
    @Option(help: "Checkpoint directory (the base, never changed).") var model: String
    @Option(help: "A text file to read (bytes are the tokens).") var text: String?
    @Option(help: "Books of the corpus instead (comma-separated abbreviations, e.g. Job,Luke,Heb; or long).") var book: String?
    @Option(help: "The corpus, for --book.") var corpus = "data/kjv.txt"
    @Option(help: "Read at most this many tokens of each text (0: all).") var maxTokens = 0
    @Option(help: "Tokens per chunk.") var chunk = 256
    @Option(help: "Preceding tokens of context.") var window = 768
    @Option(help: "Training epochs per chunk.") var epochs = 2
    @Option(help: "LoRA rank.") var rank = 8
    @Option(help: "lora_alpha.") var alpha = 16.0
    @Option(help: "Comma-separated target modules.") var targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    @Option(help: "Constant learning rate.") var lr = 1e-3
    @Option(help: "Seed of the adapter's A.") var seed: UInt64 = 1
    @Option(help: "Write every chunk's scores and the summary as JSON here.") var json: String?
    @Option(help: "Worker threads (default: all cores).") var threads: Int?
    @Flag(help: "Print only the summary, not a line per chunk.") var quiet = false

    struct Summary: Codable {
        let chunks: Int, tokens: Int
        let adaptedBitsPerByte: Double, baseBitsPerByte: Double
        /// 1 − adapted/base perplexity: 1 − 2^(adapted − base) in bits per byte.
        let perplexityReduction: Double
    }
    struct TextResult: Codable {
        let name: String, chunks: [TempLoRAChunk], all: Summary, secondHalf: Summary, trainingSeconds: Double, scoringSeconds: Double
    }
    struct Output: Codable {
        let model: String, chunk: Int, window: Int, epochs: Int, rank: Int, alpha: Double, learningRate: Double, targets: [String]
        let texts: [TextResult], all: Summary, secondHalf: Summary, trainingSeconds: Double, scoringSeconds: Double
    }

    static func summary(_ cs: [TempLoRAChunk]) -> Summary {
        let n = cs.reduce(0) { $0 + $1.tokens }
        let a = cs.reduce(0) { $0 + $1.adaptedLoss * Double($1.tokens) } / Double(max(1, n)) / M_LN2
        let b = cs.reduce(0) { $0 + $1.baseLoss * Double($1.tokens) } / Double(max(1, n)) / M_LN2
        return Summary(chunks: cs.count, tokens: n, adaptedBitsPerByte: a, baseBitsPerByte: b, perplexityReduction: 1 - exp2(a - b))
    }

    func run() throws {
        guard (text == nil) != (book == nil) else { throw ValidationError("give exactly one of --text and --book") }
        var texts: [(name: String, tokens: [Int32])]
        if let text {
            guard let data = FileManager.default.contents(atPath: text) else { throw ValidationError("cannot read \(text)") }
            texts = [(text, [ByteTokenizer.bos] + data.map { Int32($0) })]
        } else {
            // The book without its EOS: nothing follows the last chunk.
            texts = try corpusDocuments(book!, corpus: corpus).map { ($0.name, Array($0.tokens.dropLast())) }
        }
        if maxTokens > 0 { texts = texts.map { ($0.name, Array($0.tokens.prefix(maxTokens))) } }
        var o = TempLoRAOptions()
        (o.chunk, o.window, o.epochs, o.rank, o.alpha, o.learningRate, o.seed, o.threads) =
            (chunk, window, epochs, rank, alpha, lr, seed, threads)
        o.targetModules = targets.split(separator: ",").map(String.init)
        let base = try CausalLM(directory: model)
        if !quiet {
            print("| text | chunk | tokens | bits/byte with Temp-LoRA | without | training s |")
            print("|---|---|---|---|---|---|")
        }
        var results = [TextResult]()
        for (name, ids) in texts {
            let t0 = Date()
            let chunks = try runTempLoRA(model: base, tokens: ids, options: o) { c in
                if !quiet {
                    print(String(format: "| %@ | %d | %d | %.4f | %.4f | %.2f |", name, c.index, c.tokens, c.adaptedLoss / M_LN2,
                                 c.baseLoss / M_LN2, c.trainingSeconds))
                }
            }
            let total = Date().timeIntervalSince(t0), training = chunks.reduce(0) { $0 + $1.trainingSeconds }
            results.append(TextResult(name: name, chunks: chunks, all: Self.summary(chunks),
                                      secondHalf: Self.summary(Array(chunks[(chunks.count / 2)...])),
                                      trainingSeconds: training, scoringSeconds: total - training))
        }
        let all = Self.summary(results.flatMap(\.chunks))
        let second = Self.summary(results.flatMap { Array($0.chunks[($0.chunks.count / 2)...]) })
        let training = results.reduce(0) { $0 + $1.trainingSeconds }, scoring = results.reduce(0) { $0 + $1.scoringSeconds }
        for r in results + [TextResult(name: "all texts", chunks: [], all: all, secondHalf: second, trainingSeconds: training,
                                       scoringSeconds: scoring)] {
            for (part, s) in [("all chunks", r.all), ("second half", r.secondHalf)] {
                print(String(format: "%@, %@: %.4f bits/byte with Temp-LoRA, %.4f without (perplexity %.1f%% lower)",
                             r.name, part, s.adaptedBitsPerByte, s.baseBitsPerByte, s.perplexityReduction * 100))
            }
        }
        print(String(format: "training added %.1f s to %.1f s of scoring", training, scoring))
        if let json {
            try writeJSON(Output(model: model, chunk: chunk, window: window, epochs: epochs, rank: rank, alpha: alpha,
                                 learningRate: lr, targets: o.targetModules, texts: results, all: all, secondHalf: second,
                                 trainingSeconds: training, scoringSeconds: scoring), to: json)
        }
    }
}
