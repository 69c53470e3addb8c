// Tokenizers of GGUF vocabularies (and Hugging Face tokenizer.json files): GPT-2 byte-level BPE with
// llama.cpp's pre-tokenizers, and SentencePiece BPE (by scores, or by merges) with byte fallback.
// Control, user-defined and unknown-type tokens written in the text are single ids (leftmost, longest
// match first, as Hugging Face's added tokens are found).

/// An immutable tokenizer: encodes text to ids and decodes ids to text.
public final class Tokenizer: Sendable {
    public let vocabulary: TokenizerVocabulary

    enum Engine: Sendable, Equatable {
        case byteLevel(PreTokenizerKind)
        /// SentencePiece BPE by scores (llama.cpp's llm_tokenizer_spm).
        case sentencePieceScores
        /// SentencePiece-style BPE by merge ranks (Hugging Face's BPE with byte_fallback).
        case sentencePieceMerges
    }

    enum SpacePrefix: Sendable { case never, always, first }

    struct Options: Sendable {
        var ignoreMerges: Bool? = nil
        var spacePrefix: SpacePrefix? = nil
        var byteFallback = true
        /// Cut SentencePiece text into words and cache words in long texts (off only to test that both agree).
        var fastPaths = true
    }

    let engine: Engine
    let fastPaths: Bool
    let ignoreMerges: Bool
    let spacePrefix: SpacePrefix
    let byteFallback: Bool
    let table: ByteTable
    let pairs: PairTable
    let scores: [Float]
    /// For byte-level BPE, the id of each byte's GPT-2 character; for SentencePiece, of `<0xNN>`. -1 when absent.
    let byteIDs: [Int32]
    /// The bytes each id decodes to, and where they start (count + 1 offsets).
    let pieceBytes: [UInt8]
    let pieceStart: [Int32]
    /// Control and unknown-type tokens: left out by `decode(skipSpecial: true)`.
    let skippable: [Bool]
    let unknown: Int32
    // The trie of the tokens matched in text: children by (node, byte), the id ending at each node.
    let specialChildren: PairTable
    let specialTerminal: [Int32]
    let specialFirstByte: [Bool]
    public let endOfGenerationIDs: [Int32]
    let endOfGeneration: Set<Int32>
    /// SentencePiece: tokens with a ▁ after their first character, and where (nil: too many to check,
    /// the text is not cut into words). No merge crosses a ▁ unless one of them is written across it.
    let interiorSpaceTokens: InteriorSpaceTokens?

    /// Tokens with a ▁ after their first character, listed by the byte before that ▁.
    struct InteriorSpaceTokens: Sendable {
        var tokens: [[UInt8]] = []
        var byPrecedingByte = [[(token: Int, offset: Int)]](repeating: [], count: 256)
    }

    /// Names of the tokens that end a generation when they are control tokens (besides `eosID` and
    /// the vocabulary's `endOfGenerationIDs`).
    public static let endOfGenerationNames: Set<String> = [
        "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>", "<|end_of_text|>", "<end_of_turn>",
        "<|end|>", "</s>", "<|return|>", "<EOT>", "<|END_OF_TURN_TOKEN|>",
    ]

    public convenience init(_ vocabulary: TokenizerVocabulary) throws {
        var pairs: [(String, String)]? = nil
        if let merges = vocabulary.merges {
            pairs = []
            pairs!.reserveCapacity(merges.count)
            for (i, m) in merges.enumerated() {
                let parts = m.utf8.split(separator: 0x20, maxSplits: 2, omittingEmptySubsequences: false)
                guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else { throw TokenizerError.malformedMerge(index: i, merge: m) }
                pairs!.append((String(decoding: parts[0], as: UTF8.self), String(decoding: parts[1], as: UTF8.self)))
            }
        }
        try self.init(vocabulary: vocabulary, mergePairs: pairs, options: Options())
    }

    init(vocabulary v: TokenizerVocabulary, mergePairs: [(String, String)]?, options: Options) throws {
        let n = v.tokens.count
        guard n > 0 else { throw TokenizerError.emptyVocabulary }
        guard n < Int(Int32.max) else { throw TokenizerError.lengthMismatch(field: "tokens", expected: Int(Int32.max), actual: n) }
        if let s = v.scores, s.count != n { throw TokenizerError.lengthMismatch(field: "scores", expected: n, actual: s.count) }
        if let t = v.tokenTypes, t.count != n { throw TokenizerError.lengthMismatch(field: "tokenTypes", expected: n, actual: t.count) }
        for (name, id) in [("bos", v.bosID), ("eos", v.eosID), ("unknown", v.unknownID), ("padding", v.paddingID)] {
            if let id, id < 0 || Int(id) >= n { throw TokenizerError.specialIDOutOfRange(name: name, id: id, vocabularySize: n) }
        }
        for id in v.endOfGenerationIDs where id < 0 || Int(id) >= n {
            throw TokenizerError.specialIDOutOfRange(name: "end-of-generation", id: id, vocabularySize: n)
        }
        let types = v.tokenTypes ?? [Int32](repeating: TokenizerVocabulary.TokenType.normal, count: n)

        var engine: Engine
        var ignoreMerges = options.ignoreMerges ?? false
        switch v.model {
        case let .bytePairEncoding(pre):
            guard let named = PreTokenizerKind.named(pre) else { throw TokenizerError.unknownPreTokenizer(pre) }
            engine = .byteLevel(named.kind)
            if options.ignoreMerges == nil { ignoreMerges = named.ignoreMerges }
            guard mergePairs != nil else { throw TokenizerError.missingMerges }
        case .sentencePiece:
            if mergePairs != nil { engine = .sentencePieceMerges }
            else {
                guard v.scores != nil else { throw TokenizerError.missingScores }
                engine = .sentencePieceScores
            }
        }

        var table = ByteTable(capacity: n)
        for (i, t) in v.tokens.enumerated() { table.insert(t.utf8, Int32(i)) }

        var pairTable = PairTable(capacity: mergePairs?.count ?? 0)
        if let mergePairs {
            for (i, (l, r)) in mergePairs.enumerated() {
                guard let li = table.lookup(l) else { throw TokenizerError.unknownMergeToken(index: i, token: l) }
                guard let ri = table.lookup(r) else { throw TokenizerError.unknownMergeToken(index: i, token: r) }
                guard let m = table.lookup(Array(l.utf8) + Array(r.utf8)) else { throw TokenizerError.unknownMergeToken(index: i, token: l + r) }
                pairTable.insert(li, ri, rank: Int32(i), result: m)
            }
        }

        let isByteLevel: Bool
        if case .byteLevel = engine { isByteLevel = true } else { isByteLevel = false }
        var byteIDs = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            let key = isByteLevel ? String(byteLevelCharacter[b]) : "<0x" + hex2(UInt8(b)) + ">"
            if let id = table.lookup(key) { byteIDs[b] = id }
        }

        // What each id decodes to.
        var pieceBytes: [UInt8] = []
        var pieceStart: [Int32] = [0]
        pieceStart.reserveCapacity(n + 1)
        var skippable = [Bool](repeating: false, count: n)
        var isByteID = [Bool](repeating: false, count: n)
        for id in byteIDs where id >= 0 { isByteID[Int(id)] = true }
        for (i, t) in v.tokens.enumerated() {
            let ty = types[i]
            if ty == TokenizerVocabulary.TokenType.control || ty == TokenizerVocabulary.TokenType.unknown { skippable[i] = true }
            let raw = ty == TokenizerVocabulary.TokenType.control || ty == TokenizerVocabulary.TokenType.userDefined
                || ty == TokenizerVocabulary.TokenType.unknown
            if raw {
                pieceBytes.append(contentsOf: t.utf8)
            } else if isByteLevel {
                for s in t.unicodeScalars {
                    if let b = byteLevelByte(s) { pieceBytes.append(b) } else { pieceBytes.append(contentsOf: String(s).utf8) }
                }
            } else if ty == TokenizerVocabulary.TokenType.byte || isByteID[i], let b = parseByteToken(t) {
                pieceBytes.append(b)
            } else {
                var u = Array(t.utf8)
                var k = 0
                while k < u.count {
                    if k + 2 < u.count && u[k] == 0xE2 && u[k + 1] == 0x96 && u[k + 2] == 0x81 {
                        u.replaceSubrange(k..<(k + 3), with: [0x20])
                    }
                    k += 1
                }
                pieceBytes.append(contentsOf: u)
            }
            pieceStart.append(Int32(pieceBytes.count))
        }

        // Tokens matched in the text before the model runs.
        var children = PairTable(capacity: 1024)
        var terminal: [Int32] = [-1]
        var firstByte = [Bool](repeating: false, count: 256)
        for (i, t) in v.tokens.enumerated() {
            let ty = types[i]
            guard ty == TokenizerVocabulary.TokenType.control || ty == TokenizerVocabulary.TokenType.userDefined
                || ty == TokenizerVocabulary.TokenType.unknown else { continue }
            let u = Array(t.utf8)
            guard let f = u.first else { continue }
            firstByte[Int(f)] = true
            var node: Int32 = 0
            for b in u {
                if let c = children.lookup(node, Int32(b)) { node = c.result } else {
                    let c = Int32(terminal.count)
                    terminal.append(-1)
                    children.insert(node, Int32(b), rank: 0, result: c)
                    node = c
                }
            }
            terminal[Int(node)] = Int32(i)   // a text given twice keeps the last id
        }

        var eog: [Int32] = []
        if let e = v.eosID { eog.append(e) }
        for id in v.endOfGenerationIDs where !eog.contains(id) { eog.append(id) }
        for (i, t) in v.tokens.enumerated()
        where types[i] == TokenizerVocabulary.TokenType.control && Self.endOfGenerationNames.contains(t) && !eog.contains(Int32(i)) {
            eog.append(Int32(i))
        }

        var interior: InteriorSpaceTokens? = nil
        if !isByteLevel && options.fastPaths {
            var found = InteriorSpaceTokens()
            for t in v.tokens {
                let u = Array(t.utf8)
                guard u.count > 3 else { continue }
                let index = found.tokens.count
                var any = false
                for k in 1..<(u.count - 2) where u[k] == 0xE2 && u[k + 1] == 0x96 && u[k + 2] == 0x81 {
                    found.byPrecedingByte[Int(u[k - 1])].append((index, k))
                    any = true
                }
                if any { found.tokens.append(u) }
            }
            if found.tokens.count <= 4096 { interior = found }
        }

        self.vocabulary = v
        self.interiorSpaceTokens = interior
        self.engine = engine
        self.fastPaths = options.fastPaths
        self.ignoreMerges = ignoreMerges
        self.spacePrefix = options.spacePrefix ?? (v.addSpacePrefix ? .always : .never)
        self.byteFallback = options.byteFallback
        self.table = table
        self.pairs = pairTable
        self.scores = v.scores ?? []
        self.byteIDs = byteIDs
        self.pieceBytes = pieceBytes
        self.pieceStart = pieceStart
        self.skippable = skippable
        self.unknown = v.unknownID ?? -1
        self.specialChildren = children
        self.specialTerminal = terminal
        self.specialFirstByte = firstByte
        self.endOfGenerationIDs = eog
        self.endOfGeneration = Set(eog)
    }

    public var count: Int { vocabulary.tokens.count }

    /// The token's string as the vocabulary spells it (`Ġ`/`▁` and all), nil for an invalid id.
    public func tokenText(_ id: Int32) -> String? {
        guard id >= 0 && Int(id) < vocabulary.tokens.count else { return nil }
        return vocabulary.tokens[Int(id)]
    }

    /// The id of a token spelled exactly so, nil when the vocabulary has none.
    public func tokenID(_ text: String) -> Int32? { table.lookup(text) }

    /// eosID, the vocabulary's endOfGenerationIDs, and the control tokens named in `endOfGenerationNames`.
    public func isEndOfGeneration(_ id: Int32) -> Bool { endOfGeneration.contains(id) }

    // MARK: Encoding

    /// Encodes a text. Control, user-defined and unknown-type tokens written in it are single ids; BOS
    /// (and EOS) are added when `addSpecial` and the vocabulary says so.
    public func encode(_ text: String, addSpecial: Bool = true) -> [Int32] {
        var out: [Int32] = []
        out.reserveCapacity(text.utf8.count / 3 + 2)
        if addSpecial && vocabulary.addBOS, let b = vocabulary.bosID { out.append(b) }
        var text = text
        text.withUTF8 { buf in
            guard let base = buf.baseAddress, buf.count > 0 else { return }
            var state = EncodeState()
            if buf.count >= 4096 && fastPaths { state.cache = WordCache() }
            var i = 0, segment = 0
            let n = buf.count
            while i < n {
                if specialFirstByte[Int(base[i])], let (end, id) = matchSpecial(base, i, n) {
                    if segment < i { encodeSegment(base, segment, i, &out, &state) }
                    out.append(id)
                    i = end; segment = end
                } else {
                    i += 1
                }
            }
            if segment < n { encodeSegment(base, segment, n, &out, &state) }
        }
        if addSpecial && vocabulary.addEOS, let e = vocabulary.eosID { out.append(e) }
        return out
    }

    /// The longest special token starting at i: its end and id.
    @inline(__always)
    private func matchSpecial(_ p: UnsafePointer<UInt8>, _ i: Int, _ n: Int) -> (Int, Int32)? {
        var node: Int32 = 0, j = i
        var best: (Int, Int32)? = nil
        while j < n, let c = specialChildren.lookup(node, Int32(p[j])) {
            node = c.result
            j += 1
            let t = specialTerminal[Int(node)]
            if t >= 0 { best = (j, t) }
        }
        return best
    }

    struct EncodeState {
        var ids: [Int32] = []
        var starts: [Int32] = []
        var lengths: [Int32] = []
        var prev: [Int32] = []
        var next: [Int32] = []
        var heap = MergeHeap()
        var scratch: [UInt8] = []
        var pieces: [Int] = []
        var cache: WordCache? = nil
    }

    /// Tokenizes one word through the call's cache (kept only for texts long enough to repeat words).
    @inline(__always)
    private func cached(_ p: UnsafePointer<UInt8>, _ n: Int, _ out: inout [Int32], _ st: inout EncodeState,
                        _ tokenize: (UnsafePointer<UInt8>, Int, inout [Int32], inout EncodeState) -> Void) {
        guard st.cache != nil, n > 1, n <= 64 else { tokenize(p, n, &out, &st); return }
        let h = ByteTable.hash(p, n)
        if let r = st.cache!.lookup(p, n, h) {
            out.append(contentsOf: st.cache!.ids[r])
            return
        }
        let before = out.count
        tokenize(p, n, &out, &st)
        st.cache!.insert(p, n, h, out[before...])
    }

    private func encodeSegment(_ p: UnsafePointer<UInt8>, _ start: Int, _ end: Int, _ out: inout [Int32], _ st: inout EncodeState) {
        switch engine {
        case let .byteLevel(kind):
            st.pieces.removeAll(keepingCapacity: true)
            PreTokenizer(p: p).split(kind, start, end) { a, b in st.pieces.append(a); st.pieces.append(b) }
            var k = 0
            let pieces = st.pieces
            while k < pieces.count {
                cached(p + pieces[k], pieces[k + 1] - pieces[k], &out, &st) { bytePairWord($0, 0, $1, &$2, &$3) }
                k += 2
            }
        case .sentencePieceScores, .sentencePieceMerges:
            // Spaces become ▁, with a ▁ first when the model prefixes one.
            var s = st.scratch
            st.scratch = []
            s.removeAll(keepingCapacity: true)
            let prefix = spacePrefix == .always || (spacePrefix == .first && start == 0)
            if prefix { s.append(contentsOf: [0xE2, 0x96, 0x81]) }
            for i in start..<end {
                let b = p[i]
                if b == 0x20 { s.append(0xE2); s.append(0x96); s.append(0x81) } else { s.append(b) }
            }
            s.withUnsafeBufferPointer { b in
                let base = b.baseAddress!
                let scores = engine == .sentencePieceScores
                // Cut before each ▁ that no token spans: the words are tokenized alone, with the same result.
                var word = 0
                if let interior = interiorSpaceTokens {
                    var q = 1
                    while q + 2 < b.count {
                        if base[q] == 0xE2 && base[q + 1] == 0x96 && base[q + 2] == 0x81 {
                            if !Self.spanned(base, b.count, q, interior) {
                                if scores { cached(base + word, q - word, &out, &st) { sentencePieceByScores($0, $1, &$2, &$3) } }
                                else { cached(base + word, q - word, &out, &st) { sentencePieceByMerges($0, $1, &$2, &$3) } }
                                word = q
                            }
                            q += 3
                        } else { q += 1 }
                    }
                }
                if scores { cached(base + word, b.count - word, &out, &st) { sentencePieceByScores($0, $1, &$2, &$3) } }
                else { cached(base + word, b.count - word, &out, &st) { sentencePieceByMerges($0, $1, &$2, &$3) } }
            }
            st.scratch = s
        }
    }

    /// Whether a token with an interior ▁ is written across the ▁ at q.
    @inline(__always)
    private static func spanned(_ p: UnsafePointer<UInt8>, _ n: Int, _ q: Int, _ interior: InteriorSpaceTokens) -> Bool {
        let candidates = interior.byPrecedingByte[Int(p[q - 1])]
        if candidates.isEmpty { return false }
        for (i, k) in candidates where q - k >= 0 {
            let t = interior.tokens[i]
            if q - k + t.count <= n && t.withUnsafeBufferPointer({ memcmpBytes($0.baseAddress!, p + (q - k), t.count) }) { return true }
        }
        return false
    }

    @inline(__always)
    private func appendUnknownBytes(_ p: UnsafePointer<UInt8>, _ start: Int, _ length: Int, _ out: inout [Int32]) {
        if byteFallback {
            var ok = true
            for k in 0..<length where byteIDs[Int(p[start + k])] < 0 { ok = false }
            if ok {
                for k in 0..<length { out.append(byteIDs[Int(p[start + k])]) }
                return
            }
        }
        if unknown >= 0 { out.append(unknown) }
    }

    /// Byte-level BPE of one pre-tokenized word: its bytes, merged by rank.
    private func bytePairWord(_ p: UnsafePointer<UInt8>, _ start: Int, _ end: Int, _ out: inout [Int32], _ st: inout EncodeState) {
        // A byte without a token (SmolLM2 has none for 0x04, 0xF1, …) is left out, as llama.cpp does.
        let n = end - start
        if n == 1 {
            let id = byteIDs[Int(p[start])]
            if id >= 0 { out.append(id) }
            return
        }
        if ignoreMerges {
            st.scratch.removeAll(keepingCapacity: true)
            for i in start..<end { st.scratch.append(contentsOf: byteLevelUTF8[Int(p[i])]) }
            if let id = st.scratch.withUnsafeBufferPointer({ table.lookup($0.baseAddress!, $0.count) }) {
                out.append(id); return
            }
        }
        st.ids.removeAll(keepingCapacity: true)
        st.prev.removeAll(keepingCapacity: true)
        st.next.removeAll(keepingCapacity: true)
        for k in 0..<n {
            st.ids.append(byteIDs[Int(p[start + k])])
            st.prev.append(Int32(k - 1))
            st.next.append(k + 1 < n ? Int32(k + 1) : -1)
        }
        mergeByRanks(n, &st)
        var k: Int32 = 0
        while k >= 0 {
            let id = st.ids[Int(k)]
            if id >= 0 { out.append(id) }
            k = st.next[Int(k)]
        }
    }

    /// Merges the linked symbols st.ids/prev/next (0..<n) by merge rank, lowest first, leftmost on ties.
    private func mergeByRanks(_ n: Int, _ st: inout EncodeState) {
        st.heap.removeAll()
        for k in 0..<(n - 1) {
            let l = st.ids[k], r = st.ids[k + 1]
            if l >= 0 && r >= 0, let m = pairs.lookup(l, r) {
                st.heap.push(.init(priority: Float(m.rank), left: Int32(k), right: Int32(k + 1), size: l, result: r))
            }
        }
        while !st.heap.isEmpty {
            let item = st.heap.pop()
            let l = Int(item.left), r = Int(item.right)
            // Stale when either side has changed since the pair was pushed (size/result hold the two ids).
            guard st.next[l] == item.right, st.ids[l] == item.size, st.ids[r] == item.result,
                  let m = pairs.lookup(item.size, item.result) else { continue }
            st.ids[l] = m.result
            st.ids[r] = -2
            let nr = st.next[r]
            st.next[l] = nr
            st.next[r] = -1
            if nr >= 0 { st.prev[Int(nr)] = Int32(l) }
            let pl = st.prev[l]
            if pl >= 0 {
                let a = st.ids[Int(pl)]
                if a >= 0, let m2 = pairs.lookup(a, m.result) {
                    st.heap.push(.init(priority: Float(m2.rank), left: pl, right: Int32(l), size: a, result: m.result))
                }
            }
            if nr >= 0 {
                let b = st.ids[Int(nr)]
                if b >= 0, let m2 = pairs.lookup(m.result, b) {
                    st.heap.push(.init(priority: Float(m2.rank), left: Int32(l), right: nr, size: m.result, result: b))
                }
            }
        }
    }

    @inline(__always)
    private static func utf8Length(_ b: UInt8) -> Int { b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4 }

    /// SentencePiece BPE by scores over the characters of p[0..<n] (already escaped).
    private func sentencePieceByScores(_ p: UnsafePointer<UInt8>, _ n: Int, _ out: inout [Int32], _ st: inout EncodeState) {
        st.starts.removeAll(keepingCapacity: true)
        st.lengths.removeAll(keepingCapacity: true)
        st.prev.removeAll(keepingCapacity: true)
        st.next.removeAll(keepingCapacity: true)
        st.ids.removeAll(keepingCapacity: true)
        var i = 0
        while i < n {
            let len = min(Self.utf8Length(p[i]), n - i)
            st.starts.append(Int32(i)); st.lengths.append(Int32(len))
            i += len
        }
        let count = st.starts.count
        for k in 0..<count {
            st.prev.append(Int32(k - 1)); st.next.append(k + 1 < count ? Int32(k + 1) : -1); st.ids.append(-2)
        }
        st.heap.removeAll()
        scores.withUnsafeBufferPointer { sc in
            @inline(__always) func tryAdd(_ l: Int32, _ r: Int32, _ st: inout EncodeState) {
                guard l >= 0 && r >= 0 else { return }
                let s = Int(st.starts[Int(l)]), size = Int(st.lengths[Int(l)] + st.lengths[Int(r)])
                guard let id = table.lookup(p + s, size) else { return }
                st.heap.push(.init(priority: -sc[Int(id)], left: l, right: r, size: Int32(size), result: id))
            }
            for k in 0..<max(0, count - 1) { tryAdd(Int32(k), Int32(k + 1), &st) }
            while !st.heap.isEmpty {
                let item = st.heap.pop()
                let l = Int(item.left), r = Int(item.right)
                let ll = st.lengths[l], rl = st.lengths[r]
                guard ll != 0, rl != 0, ll + rl == item.size, st.next[l] == item.right else { continue }
                st.lengths[l] = item.size
                st.lengths[r] = 0
                st.ids[l] = item.result
                let nr = st.next[r]
                st.next[l] = nr
                if nr >= 0 { st.prev[Int(nr)] = Int32(l) }
                tryAdd(st.prev[l], Int32(l), &st)
                tryAdd(Int32(l), nr, &st)
            }
        }
        var k: Int32 = count > 0 ? 0 : -1
        while k >= 0 {
            let s = Int(st.starts[Int(k)]), len = Int(st.lengths[Int(k)])
            var id = st.ids[Int(k)]
            if id == -2 { id = table.lookup(p + s, len) ?? -1 }
            if id >= 0 { out.append(id) } else { appendUnknownBytes(p, s, len, &out) }
            k = st.next[Int(k)]
        }
    }

    /// SentencePiece-style BPE by merge ranks over the characters of p[0..<n] (Hugging Face's BPE with
    /// byte fallback): characters outside the vocabulary become byte tokens.
    private func sentencePieceByMerges(_ p: UnsafePointer<UInt8>, _ n: Int, _ out: inout [Int32], _ st: inout EncodeState) {
        st.starts.removeAll(keepingCapacity: true)
        st.lengths.removeAll(keepingCapacity: true)
        st.prev.removeAll(keepingCapacity: true)
        st.next.removeAll(keepingCapacity: true)
        st.ids.removeAll(keepingCapacity: true)
        var i = 0
        while i < n {
            let len = min(Self.utf8Length(p[i]), n - i)
            st.starts.append(Int32(i)); st.lengths.append(Int32(len))
            st.ids.append(table.lookup(p + i, len) ?? -1)
            i += len
        }
        let count = st.starts.count
        guard count > 0 else { return }
        for k in 0..<count { st.prev.append(Int32(k - 1)); st.next.append(k + 1 < count ? Int32(k + 1) : -1) }
        if count > 1 { mergeByRanks(count, &st) }
        var k: Int32 = 0
        while k >= 0 {
            let id = st.ids[Int(k)]
            if id >= 0 { out.append(id) } else {
                appendUnknownBytes(p, Int(st.starts[Int(k)]), Int(st.lengths[Int(k)]), &out)
            }
            k = st.next[Int(k)]
        }
    }

    // MARK: Decoding

    /// The bytes an id decodes to (the leading space of a prefixed first piece removed when `first`).
    func appendPiece(_ id: Int32, first: Bool, to bytes: inout [UInt8]) {
        var s = Int(pieceStart[Int(id)])
        let e = Int(pieceStart[Int(id) + 1])
        if first && spacePrefix != .never && s < e && pieceBytes[s] == 0x20 && !skippable[Int(id)] { s += 1 }
        bytes.append(contentsOf: pieceBytes[s..<e])
    }

    func isValid(_ id: Int32) -> Bool { id >= 0 && Int(id) < vocabulary.tokens.count }

    /// Decodes ids to text (byte tokens reassembled, invalid UTF-8 as U+FFFD). With `skipSpecial`,
    /// control and unknown-type tokens are left out. Throws `TokenizerError.invalidID`.
    public func decode(_ ids: [Int32], skipSpecial: Bool = false) throws -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        var first = true
        for id in ids {
            guard isValid(id) else { throw TokenizerError.invalidID(id) }
            if skipSpecial && skippable[Int(id)] { continue }
            appendPiece(id, first: first, to: &bytes)
            if !skippable[Int(id)] { first = false }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

// MARK: GPT-2's byte ↔ character map

/// GPT-2's printable character for each byte: printable Latin-1 stands for itself, the other bytes
/// for U+0100 onwards in order.
let byteLevelCharacter: [Character] = {
    var chars = [Character](repeating: " ", count: 256)
    var extra: UInt32 = 0
    for b in 0..<256 {
        if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
            chars[b] = Character(Unicode.Scalar(UInt32(b))!)
        } else {
            chars[b] = Character(Unicode.Scalar(0x100 + extra)!)
            extra += 1
        }
    }
    return chars
}()

let byteLevelUTF8: [[UInt8]] = byteLevelCharacter.map { Array(String($0).utf8) }

/// The byte a GPT-2 character stands for.
@inline(__always)
func byteLevelByte(_ s: Unicode.Scalar) -> UInt8? {
    let v = s.value
    if (0x21...0x7E).contains(v) || (0xA1...0xAC).contains(v) || (0xAE...0xFF).contains(v) { return UInt8(v) }
    guard v >= 0x100 && v < 0x100 + 68 else { return nil }
    return byteLevelInverse[Int(v - 0x100)]
}

private let byteLevelInverse: [UInt8] = {
    var inv = [UInt8](repeating: 0, count: 68)
    var extra = 0
    for b in 0..<256 where !((0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)) {
        inv[extra] = UInt8(b); extra += 1
    }
    return inv
}()

func hex2(_ b: UInt8) -> String {
    let digits = Array("0123456789ABCDEF")
    return String([digits[Int(b >> 4)], digits[Int(b & 15)]])
}

/// The byte of a `<0xNN>` token.
func parseByteToken(_ t: String) -> UInt8? {
    let u = Array(t.utf8)
    guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E else { return nil }
    return UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16)
}
