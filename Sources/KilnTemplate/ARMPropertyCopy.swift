/// Property iteration (https://learn.microsoft.com/azure/azure-resource-manager/templates/copy-properties): inside a
/// resource, `"copy": [{"name": "distribute", "count": 2, "input": {…}}]` creates the property `distribute` as an
/// array of `count` (0 to 800, ARM's limit) evaluations of `input`, `copyIndex('distribute')` giving each index.
/// Each element's messages carry its path (`properties.distribute[1]`).
extension ARMEvaluator {
    func propertyCopies(_ loops: [JSONNode], at path: TemplatePath, parent: TemplatePath, sink: DiagnosticSink) -> [JSONMember] {
        var members: [JSONMember] = []
        for (position, loop) in loops.enumerated() {
            let loopPath = path.appending(index: position)
            guard let reader = ObjectReader(loop, at: loopPath, sink: sink, expected: "a property loop {name, count, input}") else { continue }
            let name = reader.string("name", required: true, expected: "the name of the property the loop creates")
            let countNode = reader.value("count")
            let input = reader.value("input")
            reader.reportUnknown()
            if countNode == nil { reader.missing("count", "a count from 0 to 800") }
            if input == nil { reader.missing("input", "the value of each element") }
            guard let name, let countNode, let input else { continue }
            let count = evaluateTree(countNode, at: loopPath.appending("count"), sink: sink)
            guard let number = count.value.intValue, (0...800).contains(number) else {
                // A count that failed to evaluate was reported (and its path poisoned) already.
                sink.error(loopPath.appending("count"), "expected a count from 0 to 800 (ARM's limit), found \(count.summary)", at: countNode)
                continue
            }
            var items: [JSONNode] = []
            for index in 0..<number {
                propertyLoops.append((name, index))
                items.append(evaluateTree(input, at: parent.appending(name).appending(index: index), sink: sink))
                propertyLoops.removeLast()
            }
            members.append(JSONMember(key: name, value: JSONNode(.array(items), at: loop.position)))
        }
        return members
    }
}

/// Variable iteration (https://learn.microsoft.com/azure/azure-resource-manager/templates/copy-variables): a
/// `"copy": [{"name", "count", "input"}]` array inside a variable's object value creates that property as an array,
/// and one at the top of `variables` defines the variable `name` itself (DeploymentReader registers it; ARMEvaluator
/// unwraps it). `copyIndex('name')` gives the index, as in property loops.
extension ARMEvaluator {
    func variableCopies(_ loops: [JSONNode]) throws(Failure) -> [JSONMember] {
        var members: [JSONMember] = []
        for loop in loops {
            guard let name = loop.member("name")?.value.stringValue, let countNode = loop.member("count")?.value,
                  let input = loop.member("input")?.value else {
                throw Failure(message: "expected a variable loop {name, count, input}, found \(loop.summary)")
            }
            let count = try evaluateValue(countNode.value)
            guard let number = count.intValue, (0...800).contains(number) else {
                throw Failure(message: "expected the count of the variable loop '\(name)' from 0 to 800 (ARM's limit), found \(JSONNode(count).summary)")
            }
            var items: [JSONNode] = []
            for index in 0..<number {
                propertyLoops.append((name, index))
                defer { propertyLoops.removeLast() }
                items.append(JSONNode(try evaluateValue(input.value), at: input.position))
            }
            members.append(JSONMember(key: name, value: JSONNode(.array(items), at: loop.position)))
        }
        return members
    }
}
