import AttentionTensor
import Foundation

/// Options of a training run.
public struct TrainingOptions: Sendable, Equatable {
    /// Sequences per micro-batch, tokens per sequence, micro-batches per step (gradient accumulation).
    public var batch = 8, length = 256, accumulation = 1
    public var steps = 1000
    public var learningRate = 3e-3, warmupSteps = 50, minLearningRateFraction = 0.1
    public var weightDecay: Float = 0.1, beta2: Float = 0.95
    /// Infini's gates β learn at `learningRate` times this (``AdamW/gateLearningRateMultiplier``).
    public var gateLearningRateMultiplier: Float = 1
    /// Global gradient norm above which gradients are scaled down to it (0: no clipping).
    public var clipNorm: Double = 1
    /// The data order is a function of the seed and the step only (a resumed run sees the same batches).
    public var seed: UInt64 = 1
    /// Checkpoint every this many steps (and at the end, and on Ctrl-C).
    public var checkpointEvery = 100
    /// Validation loss every this many steps, on `evalWindows` fixed windows (0: never).
    public var evalEvery = 100, evalWindows = 32
    public var threads: Int? = nil

    public init() {}

    public func validate() throws {
        for (name, v) in [("batch", batch), ("length", length), ("accumulation", accumulation), ("steps", steps),
                          ("checkpoint interval", checkpointEvery)] where v < 1 {
            throw ModelError.invalidOption(name: name, value: "\(v)", expected: "at least 1")
        }
        try requireOption(learningRate > 0 && learningRate.isFinite, "learning rate", learningRate, "> 0 and finite")
        try requireOption(warmupSteps >= 0, "warm-up steps", warmupSteps, ">= 0")
        try requireOption(gateLearningRateMultiplier > 0 && gateLearningRateMultiplier.isFinite, "gate learning-rate multiplier",
                          gateLearningRateMultiplier, "> 0 and finite")
        try requireOption(clipNorm >= 0, "clip norm", clipNorm, ">= 0")
        try requireOption(evalEvery >= 0, "eval interval", evalEvery, ">= 0")
        try requireOption(evalWindows >= 1, "eval windows", evalWindows, ">= 1")
    }
}

/// One step's report.
public struct TrainingProgress: Sendable {
    public let step: Int, steps: Int
    public let loss: Double, learningRate: Double, gradientNorm: Double
    public let tokensPerSecond: Double, secondsLeft: Double
    /// Validation loss (nats per byte) when measured at this step.
    public let validationLoss: Double?
}

nonisolated(unsafe) private var interruptRequested: Int32 = 0

/// Next-token training of a ``CausalLM`` on a token stream: AdamW, warm-up + cosine schedule,
/// global-norm clipping, gradient accumulation, deterministic batches, resumable checkpoints
/// (`config.json`, `model.safetensors`, `optimizer.safetensors`, `trainer_state.json`) saved every
/// K steps, at the end, and when Ctrl-C interrupts (the step in flight finishes first).
public final class Trainer {
    public let model: CausalLM
    public let options: TrainingOptions
    public let optimizer: AdamW
    /// The gradients' buffer, allocated once (a run continued with `run(until:)` reuses it).
    let gradients: ParameterSet
    let train: [Int32], validation: [Int32]
    let directory: String?
    public private(set) var step = 0
    /// Validation losses measured, by step.
    public private(set) var validationLosses: [(step: Int, loss: Double)] = []

    public init(model: CausalLM, options: TrainingOptions, train: [Int32], validation: [Int32], directory: String?) throws {
        try options.validate()
        guard train.count > options.length + 1 else {
            throw ModelError.tooFewTokens(input: "the training stream", count: train.count, minimum: options.length + 2)
        }
        guard validation.isEmpty || validation.count > options.length + 1 else {
            throw ModelError.tooFewTokens(input: "the validation stream", count: validation.count, minimum: options.length + 2)
        }
        for (s, stream) in [train, validation].enumerated() {
            if let bad = stream.firstIndex(where: { $0 < 0 || Int($0) >= model.config.vocabSize }) {
                throw ModelError.tokenOutOfRange(token: Int(stream[bad]), sequence: s, position: bad, vocabulary: model.config.vocabSize)
            }
        }
        (self.model, self.options, self.train, self.validation, self.directory) = (model, options, train, validation, directory)
        optimizer = try AdamW(parameters: model.parameters, beta2: options.beta2, weightDecay: options.weightDecay)
        optimizer.gateLearningRateMultiplier = options.gateLearningRateMultiplier
        gradients = try ParameterSet(zerosLike: model.parameters)
    }

    /// The files of a checkpoint besides `trainer_state.json`, which lists them with their sizes
    /// and hashes (its manifest) and is written last.
    static let checkpointFiles = ["config.json", "model.safetensors", "optimizer.safetensors"]

    /// Resumes from `directory`'s `optimizer.safetensors` and `trainer_state.json` (the model was
    /// loaded from the same directory). The run's batch, length, seed and accumulation must be the
    /// checkpoint's (else the batches differ from the run that was never stopped): a difference is
    /// ``ModelError/resumeMismatch(directory:option:value:saved:)`` naming the option. The files must be the ones the state's
    /// manifest lists (an interrupted save leaves new weights beside an old state): a mismatch is
    /// ``ModelError/invalidCheckpoint(file:reason:)`` naming the file. (States written before the manifest
    /// existed have none, and their files are taken as they are.)
    public func resume() throws {
        guard let directory else { return }
        guard let data = FileManager.default.contents(atPath: directory + "/trainer_state.json"),
              let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let s = o["step"] as? Int else {
            throw ModelError.invalidCheckpoint(file: directory + "/trainer_state.json", reason: "missing or malformed")
        }
        func saved(_ key: String) -> NSNumber? { (o[key] as? NSNumber).flatMap { isJSONBool($0) ? nil : $0 } }
        for (key, option, value) in [("batch", "batch", options.batch), ("length", "length", options.length),
                                     ("accumulation", "accumulation", options.accumulation)] {
            guard let n = saved(key), let was = Int(n.stringValue) else {
                throw ModelError.invalidCheckpoint(file: directory + "/trainer_state.json", reason: "\(key) is missing or not an integer")
            }
            if was != value {
                throw ModelError.resumeMismatch(directory: directory, option: option, value: "\(value)", saved: "\(was)")
            }
        }
        // Earlier states wrote seeds >= 2^63 as their two's-complement Int64.
        guard let n = saved("seed"), let seed = UInt64(n.stringValue) ?? Int64(n.stringValue).map({ UInt64(bitPattern: $0) }) else {
            throw ModelError.invalidCheckpoint(file: directory + "/trainer_state.json", reason: "seed is missing or not an integer")
        }
        if seed != options.seed {
            throw ModelError.resumeMismatch(directory: directory, option: "seed", value: "\(options.seed)", saved: "\(seed)")
        }
        if let manifest = o["files"] {
            guard let files = manifest as? [String: Any] else {
                throw ModelError.invalidCheckpoint(file: directory + "/trainer_state.json", reason: "files must be an object")
            }
            for name in Self.checkpointFiles {
                guard let f = files[name] as? [String: Any], let bytes = f["bytes"] as? Int, let hash = f["fnv1a64"] as? String else {
                    throw ModelError.invalidCheckpoint(file: directory + "/trainer_state.json", reason: "does not list \(name)")
                }
                let found = try AtomicFile.fingerprint(directory + "/" + name)
                guard found.bytes == bytes, found.fnv1a64 == hash else {
                    throw ModelError.invalidCheckpoint(file: directory + "/" + name, reason: "not the file trainer_state.json lists "
                        + "(\(found.bytes) bytes, hash \(found.fnv1a64); listed \(bytes), \(hash)): a save was interrupted, "
                        + "and its files are from different steps")
                }
            }
        }
        let archive = try SafeTensors.read(directory + "/optimizer.safetensors")
        let m = try ParameterSet(zerosLike: model.parameters), v = try ParameterSet(zerosLike: model.parameters)
        for e in model.parameters.entries {
            try m.set(e.name, try archive.tensor("exp_avg." + e.name))
            try v.set(e.name, try archive.tensor("exp_avg_sq." + e.name))
        }
        try optimizer.restore(step: s, m: m, v: v)
        step = s
        if let log = o["validation"] as? [[Any]] {
            validationLosses = log.compactMap { e in
                guard e.count == 2, let st = e[0] as? Int, let l = (e[1] as? NSNumber)?.doubleValue else { return nil }
                return (st, l)
            }
        }
    }

    /// Micro-batch `a` of step `s`: `B` windows of `T + 1` tokens at offsets drawn from (seed, s, a).
    func batch(step s: Int, micro a: Int) -> (tokens: [Int32], targets: [Int32]) {
        let (B, T) = (options.batch, options.length)
        var rng = SplitMix64(seed: options.seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(s) &* 1_000_003 &+ UInt64(a))
        var tokens = [Int32](), targets = [Int32]()
        tokens.reserveCapacity(B * T)
        targets.reserveCapacity(B * T)
        for _ in 0..<B {
            let o = Int(rng.next() % UInt64(train.count - T))
            tokens += train[o..<(o + T)]
            targets += train[(o + 1)..<(o + T + 1)]
        }
        return (tokens, targets)
    }

    /// Mean loss (nats per token) on `windows` evenly spaced windows of the validation stream.
    public func validationLoss() throws -> Double {
        guard !validation.isEmpty else { return .nan }
        let T = options.length, n = min(options.evalWindows, max(1, (validation.count - 1) / T))
        var total = 0.0, count = 0
        for w in 0..<n {
            let o = (validation.count - T - 1) * w / max(1, n - 1)
            let r = try model.loss(tokens: Array(validation[o..<(o + T)]), batch: 1, length: T,
                                   targets: Array(validation[(o + 1)..<(o + T + 1)]), threads: options.threads)
            total += r.loss * Double(r.positions)
            count += r.positions
        }
        return total / Double(max(1, count))
    }

    /// Trains until `options.steps` (or `until`, a step before it: the run can be continued with
    /// the same schedule), reporting each step. Returns whether it ran to the end (false:
    /// interrupted by Ctrl-C or stopped at `until`, after saving a checkpoint).
    @discardableResult
    public func run(until: Int? = nil, progress: (TrainingProgress) -> Void) throws -> Bool {
        let schedule = try LearningRateSchedule(peak: options.learningRate, warmupSteps: options.warmupSteps,
                                                totalSteps: options.steps, minFraction: options.minLearningRateFraction)
        let grads = gradients
        interruptRequested = 0
        let previous = signal(SIGINT) { _ in interruptRequested = 1 }
        defer { signal(SIGINT, previous) }
        let start = Date()
        let firstStep = step
        let tokensPerStep = Double(options.batch * options.length * options.accumulation)
        while step < options.steps {
            grads.zero()
            var loss = 0.0
            for a in 0..<options.accumulation {
                let (tokens, targets) = batch(step: step, micro: a)
                let r: LossResult
                do {
                    r = try model.loss(tokens: tokens, batch: options.batch, length: options.length, targets: targets,
                                       gradients: grads, gradientScale: 1 / Float(options.accumulation), routerAuxLoss: true,
                                       threads: options.threads)
                } catch ModelError.nonFiniteLoss(nil) { throw ModelError.nonFiniteLoss(step: step) }
                loss += r.loss / Double(options.accumulation)
            }
            let norm = grads.squaredNorm().squareRoot()
            guard norm.isFinite else { throw ModelError.nonFiniteGradient(step: step) }
            if options.clipNorm > 0, norm > options.clipNorm {
                let s = Float(options.clipNorm / norm)
                for i in 0..<grads.count { grads.scalars[i] *= s }
            }
            let lr = schedule.rate(at: step)
            try optimizer.update(model.parameters, gradients: grads, lr: Float(lr))
            step += 1
            var val: Double? = nil
            if options.evalEvery > 0, step % options.evalEvery == 0 || step == options.steps, !validation.isEmpty {
                val = try validationLoss()
                validationLosses.append((step, val!))
            }
            let elapsed = Date().timeIntervalSince(start), done = Double(step - firstStep)
            progress(TrainingProgress(step: step, steps: options.steps, loss: loss, learningRate: lr, gradientNorm: norm,
                                      tokensPerSecond: done * tokensPerStep / max(elapsed, 1e-9),
                                      secondsLeft: elapsed / max(done, 1) * Double(options.steps - step), validationLoss: val))
            let interrupted = interruptRequested != 0 || step == until
            if step % options.checkpointEvery == 0 || step == options.steps || interrupted { try saveCheckpoint() }
            if interrupted { return false }
        }
        return true
    }

    /// Model, optimizer moments and the step: one unit. Each file is written to a temporary name,
    /// fsync'd and renamed; `trainer_state.json` comes last and lists the others' sizes and hashes
    /// (its manifest), and the directory is fsync'd after it. A crash before the state's rename
    /// leaves the previous state, whose manifest no longer matches the new files: ``resume()``
    /// refuses that pair instead of resuming new weights with old moments.
    public func saveCheckpoint() throws {
        guard let directory else { return }
        try model.save(to: directory)
        var moments = [(name: String, tensor: Tensor)]()
        for e in model.parameters.entries {
            moments.append(("exp_avg." + e.name, try optimizer.m.tensor(e.name)))
            moments.append(("exp_avg_sq." + e.name, try optimizer.v.tensor(e.name)))
        }
        try SafeTensors.write(moments, to: directory + "/optimizer.safetensors")
        var files = [String: Any]()
        for name in Self.checkpointFiles {
            let f = try AtomicFile.fingerprint(directory + "/" + name)
            files[name] = ["bytes": f.bytes, "fnv1a64": f.fnv1a64]
        }
        let state: [String: Any] = [
            "step": step, "steps": options.steps, "seed": options.seed, "batch": options.batch,
            "length": options.length, "accumulation": options.accumulation, "learning_rate": options.learningRate,
            "warmup_steps": options.warmupSteps, "validation": validationLosses.map { [$0.step, $0.loss] as [Any] },
            "files": files,
        ]
        try AtomicFile.syncDirectory(directory)   // the data files' renames, before the state that lists them
        try writeAtomically(Data((jsonText(state) + "\n").utf8), to: directory + "/trainer_state.json")
        try AtomicFile.syncDirectory(directory)
    }
}
