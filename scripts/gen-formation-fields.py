#!/usr/bin/env python3
"""Writes docs/src/formation-fields.md from schemas/formation.schema.json (run from the
repository root after `cargo run -p pgha-api --bin gen-schema`)."""
import json, sys
s=json.load(open('schemas/formation.schema.json'))
defs=s['$defs']
out=[]
def ref_name(p):
    if '$ref' in p: return p['$ref'].split('/')[-1]
    for k in ('allOf','anyOf','oneOf'):
        if k in p:
            for x in p[k]:
                if '$ref' in x: return x['$ref'].split('/')[-1]
    if p.get('type')=='array' and 'items' in p: return ref_name(p['items'])
    if isinstance(p.get('additionalProperties'),dict): return ref_name(p['additionalProperties'])
    return None
def typ(p):
    t=p.get('type')
    if isinstance(t,list): t='/'.join(x for x in t if x!='null')
    r=ref_name(p)
    if t=='array': return f'list of {r or ref_name(p.get("items",{})) or p.get("items",{}).get("type","value")}'
    if t=='object' and isinstance(p.get('additionalProperties'),dict): return f'map of {r or p["additionalProperties"].get("type","value")}'
    if r: return r
    if 'enum' in p: return ' | '.join(f'`{e}`' for e in p['enum'])
    return t or 'value'
def desc(p):
    d=p.get('description','').replace('\n',' ')
    if 'default' in p: d+=f' Default: `{json.dumps(p["default"])}`.'
    return d.replace('|','\\|')
seen=set()
def walk(name, schema, path):
    props=schema.get('properties',{})
    if not props: return
    out.append(f'\n## `{path}`\n')
    if schema.get('description'): out.append(schema['description'].replace('\n',' ')+'\n')
    out.append('| field | type | what it is |\n|---|---|---|')
    subs=[]
    for k,p in props.items():
        out.append(f'| `{k}` | {typ(p)} | {desc(p)} |')
        r=ref_name(p)
        if r and r in defs and defs[r].get('properties') and r not in seen:
            seen.add(r)
            sep='[]' if p.get('type')=='array' else ('.<name>' if isinstance(p.get('additionalProperties'),dict) else '')
            subs.append((r, f'{path}.{k}{sep}'))
    for r,pp in subs: walk(r, defs[r], pp)
out.append('# Field reference\n')
out.append('Every field of a formation file, generated from `schemas/formation.schema.json`')
out.append('(itself generated from the Rust types). A test checks that every field of the')
out.append('schema is on this page; [The formation file](formation-file.md) says how they work')
out.append('together, with examples.')
walk('root', s, 'formation')
open('docs/src/formation-fields.md','w').write('\n'.join(out)+'\n')
