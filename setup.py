# Packaging reads settings.ini, as nbdev projects do, so version and requirements live in one place.
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'],
    license=cfg['license'], author=cfg['author'], author_email=cfg['author_email'],
    python_requires='>=' + cfg['min_python'], packages=setuptools.find_packages(include=['brain_go_brrr', 'brain_go_brrr.*']),
    install_requires=cfg['requirements'].split(),
    extras_require={'dev': cfg['dev_requirements'].split(), 'gpu': ['mamba-ssm']},
    zip_safe=False,
)
