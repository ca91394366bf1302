"""The model and the renderer are device-agnostic: no ``.cuda()`` call and no hard-coded
CUDA device in the code of ``projects/`` and ``data_converters/`` (tensors follow their
inputs' device; a device comes in as an argument). Docstrings and comments may name
devices; comparing a device argument with ``'cuda'`` or offering it as a choice is the
handling of that argument, not a hard-coded device."""
import ast
import glob
import os.path as osp

from conftest import REPO_ROOT

SCANNED = ('projects', 'data_converters')


def hard_coded_devices(source: str, filename: str = '<source>'):
    """``(line, what)`` for every hard-coded CUDA device in Python ``source``:
    ``x.cuda(...)``, a string ``'cuda:<n>'`` anywhere in the code, and
    ``torch.device('cuda...')`` / ``x.to('cuda...')`` / ``device='cuda...'`` in a call."""
    tree = ast.parse(source, filename)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}

    def is_cuda(node) -> bool:
        return (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and node.value.startswith('cuda'))

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', '')
            if name == 'cuda' and isinstance(func, ast.Attribute):
                found.append((node.lineno, '.cuda()'))
            elif name in ('device', 'to') and node.args and is_cuda(node.args[0]):
                found.append((node.lineno, f'{name}({node.args[0].value!r})'))
            for keyword in node.keywords:
                if keyword.arg == 'device' and is_cuda(keyword.value):
                    found.append((node.lineno, f'device={keyword.value.value!r}'))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in docstrings and node.value.startswith('cuda:')):
            found.append((node.lineno, repr(node.value)))
    return sorted(set(found))


def test_the_scanner_finds_hard_coded_devices():
    source = '''
def f(x, device='cpu'):
    """Moves nothing to 'cuda:0' (a docstring)."""
    if device == 'cuda':                      # argument handling: allowed
        pass
    a = x.cuda()
    b = x.to('cuda:1')
    c = torch.zeros(3, device='cuda')
    d = torch.device('cuda')
    e = 'cuda:0'
    return torch.cuda.is_available(), x.to(device), x.new_zeros(1)
'''
    assert hard_coded_devices(source) == [
        (6, '.cuda()'), (7, "'cuda:1'"), (7, "to('cuda:1')"), (8, "device='cuda'"),
        (9, "device('cuda')"), (10, "'cuda:0'")]


def test_no_hard_coded_cuda_in_the_model_and_the_renderer():
    files = sorted(f for folder in SCANNED
                   for f in glob.glob(osp.join(REPO_ROOT, folder, '**', '*.py'),
                                      recursive=True))
    assert len(files) > 40 and any(f.endswith('render.py') for f in files)
    found = {}
    for path in files:
        with open(path, encoding='utf-8') as f:
            hits = hard_coded_devices(f.read(), path)
        if hits:
            found[osp.relpath(path, REPO_ROOT)] = hits
    assert found == {}
